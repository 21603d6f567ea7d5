"""DIN: Deep Interest Network with target attention over the behaviour history.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018 (Sec. 4.3, eq. 3): the
user's interest in candidate ``c`` is ``sum_l a(h_l, c) h_l``, with ``a`` an attention MLP. Structure and
sizes as released with the LCRON experiments (Wang et al., ICML 2025), where DIN is the pre-ranking (two
stages) or ranking (three stages) model:

* attention: ``Linear(2D, 80) -> ReLU -> Linear(80, 1)`` on ``concat(h_l, c)``, where ``h_l`` is the
  history slot's embedding ``[H * E]`` and ``c`` the candidate's embedding of the matching item fields
  (the item field each history field shares its table with); softmax over the valid history slots (the
  release masks with a large negative logit; an empty history gives zero interest here, never NaN);
* scorer: ``concat(user/context emb, interest, candidate emb over all item fields)`` ->
  ``Linear(in, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, h/4) -> ReLU -> Linear(h/4, 1)``, ``h = 128``.

Fast and exact: the first attention layer on ``concat(h_l, c)`` is ``W_h h_l + W_c c + b``, so ``W_h h_l``
is computed once per request and history slot and ``W_c c + b`` once per candidate; the remaining
``w2 . relu(W_h h_l + W_c c_n + b)`` over every (candidate, slot) pair is a fused, chunked autograd
function (:func:`pairwise_relu_projection`) that never keeps the ``[B, N, L, 80]`` activation alive: it
recomputes each chunk in the backward pass. The result equals the concatenate-then-Linear formulation up
to floating-point rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema, RequestBatch
from .embedding import FeatureEncoder, feed_forward

__all__ = ["DIN", "pairwise_relu_projection"]

#: Elements of one ``[b, N, L, A]`` chunk in :func:`pairwise_relu_projection` (CPU: cache-sized chunks).
_CPU_CHUNK_ELEMENTS = 1 << 19
_GPU_CHUNK_ELEMENTS = 1 << 27


class _PairwiseReluProjection(torch.autograd.Function):
    """``out[b, n, l] = sum_k w[k] * relu(hh[b, l, k] + cc[b, n, k])``, chunked over b, recomputed in backward."""

    @staticmethod
    def forward(ctx, hh: torch.Tensor, cc: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(hh, cc, w)
        ctx.chunk = chunk
        out = hh.new_empty(hh.shape[0], cc.shape[1], hh.shape[1])
        for s in range(0, hh.shape[0], chunk):
            act = hh[s : s + chunk, None] + cc[s : s + chunk, :, None]  # [b, N, L, A]
            act.relu_()
            torch.matmul(act, w, out=out[s : s + chunk])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hh, cc, w = ctx.saved_tensors
        chunk = ctx.chunk
        need_hh, need_cc, need_w, _ = ctx.needs_input_grad
        d_hh = torch.empty_like(hh) if need_hh else None
        d_cc = torch.empty_like(cc) if need_cc else None
        d_w = torch.zeros_like(w) if need_w else None
        a = hh.shape[-1]
        for s in range(0, hh.shape[0], chunk):
            act = hh[s : s + chunk, None] + cc[s : s + chunk, :, None]
            act.relu_()
            g = grad[s : s + chunk]  # [b, N, L]
            if need_w:
                d_w += g.reshape(1, -1).mm(act.reshape(-1, a)).squeeze(0)
            if need_hh or need_cc:
                d_pre = torch.ops.aten.threshold_backward(g.unsqueeze(-1) * w, act, 0)  # 0 where act <= 0
                if need_hh:
                    torch.sum(d_pre, 1, out=d_hh[s : s + chunk])
                if need_cc:
                    torch.sum(d_pre, 2, out=d_cc[s : s + chunk])
        return d_hh, d_cc, d_w, None


def pairwise_relu_projection(
    hh: torch.Tensor, cc: torch.Tensor, w: torch.Tensor, *, chunk: int | None = None
) -> torch.Tensor:
    """``out[b, n, l] = sum_k w[k] * relu(hh[b, l, k] + cc[b, n, k])`` without storing the 4-D activation.

    Args:
        hh: ``[B, L, A]`` per-history-slot pre-activations (``W_h h``).
        cc: ``[B, N, A]`` per-candidate pre-activations (``W_c c + b``).
        w: ``[A]`` output weights.
        chunk: requests per chunk; default sized so a ``[chunk, N, L, A]`` block stays cache-sized on CPU
            (a few MiB) and large on GPU.

    Returns:
        ``[B, N, L]`` of ``hh.dtype``. Differentiable in ``hh``, ``cc`` and ``w`` (ReLU'(0) = 0, as PyTorch).
    """
    if hh.dim() != 3 or cc.dim() != 3 or hh.shape[0] != cc.shape[0] or hh.shape[2] != cc.shape[2]:
        raise ValueError(f"hh must be [B, L, A] and cc [B, N, A], got {tuple(hh.shape)} and {tuple(cc.shape)}")
    if w.shape != (hh.shape[2],):
        raise ValueError(f"w must be [A]=[{hh.shape[2]}], got {tuple(w.shape)}")
    cc, w = cc.to(hh.dtype), w.to(hh.dtype)  # one dtype inside the kernel (e.g. under autocast)
    if chunk is None:
        budget = _CPU_CHUNK_ELEMENTS if hh.device.type == "cpu" else _GPU_CHUNK_ELEMENTS
        chunk = max(1, budget // max(1, cc.shape[1] * hh.shape[1] * hh.shape[2]))
    return _PairwiseReluProjection.apply(hh, cc, w, int(chunk))


class DIN(nn.Module):
    """Deep Interest Network scorer for all N candidates of a request in one pass.

    Args:
        schema: dataset schema; history fields name the item fields whose tables they share.
        emb_dim: embedding dimension (8 as released).
        hidden: scorer width ``h`` (128 as released): ``h -> h -> h/4 -> 1``.
        attention_hidden: attention MLP width (80 as released).

    Raises:
        ValueError: ``hidden < 4``, non-positive ``attention_hidden`` or ``emb_dim``.
    """

    def __init__(
        self, schema: DatasetSchema, *, emb_dim: int = 8, hidden: int = 128, attention_hidden: int = 80
    ) -> None:
        super().__init__()
        if int(hidden) != hidden or hidden < 4:
            raise ValueError(
                f"hidden must be an integer >= 4 (layers hidden -> hidden -> hidden/4 -> 1), got {hidden!r}"
            )
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        d = enc.history_dim
        # Columns of the candidate embedding that match the history fields (their shared item tables).
        e = enc.emb_dim
        cols = [enc.item_fields.index(f) * e + j for f in enc.history_item_fields for j in range(e)]
        self.register_buffer("_key_columns", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.attention = feed_forward([2 * d, attention_hidden, 1]) if d > 0 else None
        self.mlp = feed_forward([enc.user_context_dim + d + enc.item_dim, hidden, hidden, hidden // 4, 1])

    def attention_weights(self, batch: RequestBatch) -> torch.Tensor:
        """Target-attention weights ``[B, N, L]``: softmax over valid history slots, zero on padded slots.

        A request with no valid history gets all-zero weights (zero interest).

        Raises:
            ValueError: the schema has no history fields (no attention).
        """
        if self.attention is None:
            raise ValueError("this DIN was built for a schema without history fields; it has no attention")
        return self._weights(self.encoder.history(batch), self.encoder.items(batch), batch.history_mask)

    def interest(self, batch: RequestBatch) -> torch.Tensor:
        """Attention-pooled history per candidate: ``[B, N, H * E]`` (zeros for an empty history)."""
        return self._interest(batch, self.encoder.items(batch))

    def _weights(self, h: torch.Tensor, c: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        key = c.index_select(-1, self._key_columns)  # [B, N, D]
        d = h.shape[-1]
        first, second = self.attention[0], self.attention[2]
        hh = F.linear(h, first.weight[:, :d])  # [B, L, A]: once per history slot
        cc = F.linear(key, first.weight[:, d:], first.bias)  # [B, N, A]: once per candidate
        logits = pairwise_relu_projection(hh, cc, second.weight[0]) + second.bias  # [B, N, L]
        valid = history_mask.unsqueeze(1)  # [B, 1, L]
        logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * valid.to(logits.dtype)

    def _interest(self, batch: RequestBatch, c: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            return c.new_zeros((*c.shape[:2], 0))
        h = self.encoder.history(batch)  # [B, L, D]
        return torch.bmm(self._weights(h, c, batch.history_mask), h)

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream)."""
        c = self.encoder.items(batch)  # [B, N, I*E]
        u = self.encoder.user_context(batch)  # [B, F]
        x = torch.cat([u.unsqueeze(1).expand(-1, c.shape[1], -1), self._interest(batch, c), c], dim=-1)
        return self.mlp(x).squeeze(-1)

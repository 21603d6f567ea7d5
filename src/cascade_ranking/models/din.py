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

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder, feed_forward, mlp_forward

__all__ = ["DIN", "pairwise_relu_projection"]

#: Elements of one ``[b, N, L, A]`` chunk in :func:`pairwise_relu_projection`, per CPU thread (CPU: cache-sized
#: chunks; on a 2-core EPYC with 32 MiB L3, 1M per thread beat both smaller and larger chunks).
_CPU_CHUNK_ELEMENTS = 1 << 20
_GPU_CHUNK_ELEMENTS = 1 << 27


_FUSED_ADD_RELU: Callable[..., torch.Tensor] | None
try:  # a fused CPU kernel (private but long-standing); the two-op path gives the same values
    _FUSED_ADD_RELU = torch.ops.aten._add_relu.out
except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
    _FUSED_ADD_RELU = None


def _add_relu(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = relu(a + b)`` (broadcast), in one pass on CPU (``aten::_add_relu``), two elsewhere."""
    if out.device.type == "cpu" and _FUSED_ADD_RELU is not None:
        return _FUSED_ADD_RELU(a, b, out=out)
    torch.add(a, b, out=out)
    return out.relu_()


class _PairwiseReluProjection(torch.autograd.Function):
    """``out[b, n, l] = sum_k w[k] * relu(hh[b, l, k] + cc[b, n, k])``, chunked over b, recomputed in backward.

    Backward, with ``M = 1[hh[b, l, k] + cc[b, n, k] > 0]`` (equivalently ``hh > -cc``: a rounded sum of two
    floats is positive exactly when the exact sum is, under IEEE gradual underflow) and ``G = grad[b, n, l] * M``:
    ``d_cc = w * sum_l G``, ``d_hh = w * sum_n G`` and, since ``relu(x) = x * 1[x > 0]``,
    ``d_w = sum_{b,l} hh * (sum_n G) + sum_{b,n} cc * (sum_l G)``; so each chunk needs one comparison, one
    product and two sums over the 4-D block, and no ``[B, N, L, A]`` tensor is ever stored.
    """

    @staticmethod
    def forward(ctx, hh: torch.Tensor, cc: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(hh, cc, w)
        ctx.chunk = chunk
        batch, length, width = hh.shape
        num = cc.shape[1]
        out = hh.new_empty(batch, num, length)
        buf = hh.new_empty(min(chunk, batch), num, length, width)
        for s in range(0, batch, chunk):
            e = min(s + chunk, batch)
            act = _add_relu(hh[s:e, None], cc[s:e, :, None], out=buf[: e - s])  # [b, N, L, A]
            torch.matmul(act, w, out=out[s:e])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hh, cc, w = ctx.saved_tensors
        chunk = ctx.chunk
        need_hh, need_cc, need_w, _ = ctx.needs_input_grad
        batch, length, width = hh.shape
        num = cc.shape[1]
        grad = grad.contiguous()
        sum_n = torch.empty_like(hh)  # sum_n G: [B, L, A]
        sum_l = torch.empty_like(cc)  # sum_l G: [B, N, A]
        neg_cc = -cc
        buf = hh.new_empty(min(chunk, batch), num, length, width)
        for s in range(0, batch, chunk):
            e = min(s + chunk, batch)
            g = buf[: e - s]
            torch.gt(hh[s:e, None], neg_cc[s:e, :, None], out=g)  # M as 0/1 in the float buffer
            g.mul_(grad[s:e, :, :, None])  # G
            torch.sum(g, 2, out=sum_l[s:e])
            torch.sum(g, 1, out=sum_n[s:e])
        d_w = (hh * sum_n).sum((0, 1)) + (cc * sum_l).sum((0, 1)) if need_w else None
        d_hh = sum_n.mul_(w) if need_hh else None
        d_cc = sum_l.mul_(w) if need_cc else None
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
            (4 MiB per torch thread) and large on GPU. Chunks split the requests only: no sum runs across
            a chunk boundary, so the chunk size does not change the values (bitwise equal in our checks).

    Returns:
        ``[B, N, L]`` of ``hh.dtype``. Differentiable in ``hh``, ``cc`` and ``w`` (ReLU'(0) = 0, as PyTorch).
    """
    if hh.dim() != 3 or cc.dim() != 3 or hh.shape[0] != cc.shape[0] or hh.shape[2] != cc.shape[2]:
        raise ValueError(f"hh must be [B, L, A] and cc [B, N, A], got {tuple(hh.shape)} and {tuple(cc.shape)}")
    if w.shape != (hh.shape[2],):
        raise ValueError(f"w must be [A]=[{hh.shape[2]}], got {tuple(w.shape)}")
    cc, w = cc.to(hh.dtype), w.to(hh.dtype)  # one dtype inside the kernel (e.g. under autocast)
    if torch.compiler.is_compiling():  # torch.export / torch.compile trace plain ops (no fused kernel, no chunk loop)
        return torch.matmul(torch.relu(hh[:, None] + cc[:, :, None]), w)
    if chunk is None:
        cpu = hh.device.type == "cpu"
        budget = _CPU_CHUNK_ELEMENTS * torch.get_num_threads() if cpu else _GPU_CHUNK_ELEMENTS
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

    _key_columns: torch.Tensor  # buffer: the candidate-embedding columns matching the history fields

    def __init__(
        self, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128, attention_hidden: int = 80
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
        e = enc.require_uniform("DIN")
        cols = [enc.item_fields.index(f) * e + j for f in enc.history_item_fields for j in range(e)]
        self.register_buffer("_key_columns", torch.tensor(cols, dtype=torch.long), persistent=False)
        # A contiguous run of columns (the usual layout: history fields in item-field order) is a free slice.
        contiguous = bool(cols) and cols == list(range(cols[0], cols[0] + len(cols)))
        self._key_slice = slice(cols[0], cols[0] + len(cols)) if contiguous else None
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
        enc = self.encoder.encode(batch)
        return self._weights(enc.require_history(), enc.require_items(), batch.history_mask)

    def interest(self, batch: RequestBatch) -> torch.Tensor:
        """Attention-pooled history per candidate: ``[B, N, H * E]`` (zeros for an empty history)."""
        enc = self.encoder.encode(batch, history=self.attention is not None)
        return self._interest(enc.history, enc.require_items(), batch.history_mask)

    def _weights(self, h: torch.Tensor, c: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        key = c[..., self._key_slice] if self._key_slice is not None else c.index_select(-1, self._key_columns)
        d = h.shape[-1]
        attention = self.attention
        assert attention is not None  # callers check
        # feed_forward([2D, A, 1]) is Linear, ReLU, Linear
        first, second = cast(nn.Linear, attention[0]), cast(nn.Linear, attention[2])
        hh = F.linear(h, first.weight[:, :d])  # [B, L, A]: once per history slot
        cc = F.linear(key, first.weight[:, d:], first.bias)  # [B, N, A]: once per candidate
        logits = pairwise_relu_projection(hh, cc, second.weight[0]) + second.bias  # [B, N, L]
        valid = history_mask.unsqueeze(1)  # [B, 1, L]
        logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * valid.to(logits.dtype)

    def _interest(self, h: torch.Tensor | None, c: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        if self.attention is None or h is None:
            return c.new_zeros((*c.shape[:2], 0))
        return torch.bmm(self._weights(h, c, history_mask), h)

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream).

        The scorer's first layer on ``concat(u, interest, c)`` is computed as ``W_u u`` once per request
        plus ``W_ic concat(interest, c) + b`` per candidate (the same affine map, without repeating the
        user/context part N times).
        """
        enc = self.encoder.encode(batch, history=self.attention is not None)
        c = enc.require_items()  # [B, N, I*E]
        x = torch.cat([self._interest(enc.history, c, batch.history_mask), c], dim=-1)  # [B, N, D + I*E]
        return mlp_forward(self.mlp, x, request=enc.user_context).squeeze(-1)

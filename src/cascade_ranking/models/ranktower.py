r"""RankTower: a two-tower pre-ranking model with multi-head gated towers, cross-attention and max-similarity.

Yan & Li, "RankTower: A Synergistic Framework for Enhancing Two-Tower Pre-Ranking Model", arXiv 2407.12385
(Sec. 3). Shapes: ``B`` requests, ``N`` candidates, ``H_u`` / ``H_i`` user / item heads, ``k`` head dim.

1. **Embedding layer** (:class:`~cascade_ranking.models.embedding.FeatureEncoder`): the user tower reads the
   user and context field embeddings plus the masked mean of the history embeddings (as DSSM); the item tower
   reads every item field.
2. **Multi-Head Gated Network** (one per tower, :class:`MultiHeadGatedNetwork`): head ``h`` is an MLP
   ``x -> Linear(in, hidden) -> ReLU -> Linear(hidden, k)`` multiplied element-wise by a gate
   ``sigmoid(W_2 ReLU(W_1 sg(x)))`` whose input is *detached* (``sg`` = stop-gradient): the gate learns
   which sub-space features matter but never pushes gradients into the embeddings. The gate is one
   bottleneck MLP for all heads, ``in -> max(1, H k / r) -> H k`` with reduction ratio ``r``. Output: the
   user multi-embedding ``E_u [B, H_u, k]`` and item multi-embedding ``E_i [B, N, H_i, k]``.
3. **Gated Cross-Attention Network** (bi-directional, :class:`GatedCrossAttention`): a Gated Attention Unit
   (Hua et al., "Transformer Quality in Linear Time", ICML 2022) whose queries come from one tower and keys
   and values from the other:

   .. math::

       Q = \phi(X_Q W_q),\ K = \phi(X_{KV} W_k),\ V = \phi(X_{KV} W_v),\ U = \sigma(X_Q W_u) \\
       \hat X_Q = \mathrm{LayerNorm}\big(X_Q + (U \odot \mathrm{softmax}(Q K^\top / \sqrt d)\, V) W_o\big)

   with ``phi = SiLU`` (the GAU's activation). User heads attend to the item heads of each candidate
   (``E_u -> Ê_u [B, N, H_u, k]``) and item heads to the user heads (``E_i -> Ê_i [B, N, H_i, k]``), each
   direction with its own parameters; ``d = k``.
4. **Maximum Similarity Layer** (parameter-free but for the temperature):
   ``s = sum_p max_q cos(Ê_u^p, Ê_i^q) / tau``, ``tau = exp(log_tau)`` learnable and positive.

**Serving split** (the paper's decoupling): :meth:`RankTower.user_multi_embedding` (once per request) and
:meth:`RankTower.item_multi_embedding` / :meth:`RankTower.encode_items` (once per item, cacheable) hold all
the towers' heavy work; :meth:`RankTower.score_from_cache` then runs only the light cross-attention and the
max-similarity per (user, item) pair. ``forward`` is exactly ``score_from_cache(user, items)``.

Choices where the summary we implement from (DESIGN.md section 5) leaves details open, all ours: per-head MLP
of one hidden layer of width ``hidden``; the gate's bottleneck relative to the gated width (SENet style);
single-head attention of width ``d = k`` per direction, with biases; ``tau`` initialised to 0.2 and clamped
to ``[1e-2, 1e2]``; cosine with ``eps = 1e-6`` on the norms. The paper's implementation details (embedding
size, number of heads, sub-space size ``k``, gate reduction ratio ``r``) could not be reached (only its
abstract was), so the size defaults (``H_u = H_i = 4``, ``k = 16``, ``r = 4``, hidden 128) are ours too and
were not tuned: on the MovieLens-100K pre-ranking data the seed-to-seed spread of validation Recall@20 (about
0.015, see the README's RankTower section) is larger than a small sweep of them could resolve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder

__all__ = ["GatedCrossAttention", "MultiHeadGatedNetwork", "RankTower", "max_similarity"]

#: Bounds of the learnable temperature (log-space clamp keeps the logits finite in float16/32).
_TAU_MIN, _TAU_MAX = 1e-2, 1e2


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class MultiHeadGatedNetwork(nn.Module):
    """``H`` gated MLP heads over one input vector: ``[..., in] -> [..., H, k]``.

    Head ``h``: ``MLP_h(x) * sigmoid(gate(sg(x)))_h`` with ``MLP_h = Linear(in, hidden) -> ReLU ->
    Linear(hidden, k)`` (the ``H`` MLPs are independent, computed as one grouped product) and
    ``gate = Linear(in, max(1, H k // r)) -> ReLU -> Linear(., H k) -> Sigmoid`` applied to the detached input.

    Args:
        in_dim: input width (``> 0``).
        heads: ``H``.
        head_dim: ``k``.
        hidden: hidden width of every head's MLP.
        reduction: gate reduction ratio ``r``.

    Raises:
        ValueError: a non-positive size.
    """

    def __init__(self, in_dim: int, *, heads: int, head_dim: int, hidden: int, reduction: int) -> None:
        super().__init__()
        in_dim = _positive_int("input width", in_dim)
        self.heads = _positive_int("heads", heads)
        self.head_dim = _positive_int("head_dim", head_dim)
        hidden = _positive_int("hidden", hidden)
        reduction = _positive_int("gate_reduction", reduction)
        out = self.heads * self.head_dim
        self.hidden = nn.Linear(in_dim, self.heads * hidden)
        bound = 1.0 / math.sqrt(hidden)  # nn.Linear's default initialisation, per head
        self.out_weight = nn.Parameter(torch.empty(self.heads, hidden, self.head_dim).uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(self.heads, self.head_dim).uniform_(-bound, bound))
        squeeze = max(1, out // reduction)
        self.gate = nn.Sequential(nn.Linear(in_dim, squeeze), nn.ReLU(), nn.Linear(squeeze, out), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., H, k]``; the gate sees ``x.detach()``."""
        lead = x.shape[:-1]
        h = torch.relu(self.hidden(x)).view(*lead, self.heads, -1)  # [..., H, hidden]
        mlp = torch.einsum("...hc,hck->...hk", h, self.out_weight) + self.out_bias
        gate = self.gate(x.detach()).view(*lead, self.heads, self.head_dim)
        return mlp * gate


class GatedCrossAttention(nn.Module):
    """One direction of RankTower's gated cross-attention (a GAU with cross keys and values).

    ``forward(x_q [..., P, k], x_kv [..., Q, k]) -> [..., P, k]`` =
    ``LayerNorm(x_q + (sigmoid(x_q W_u) * softmax(phi(x_q W_q) phi(x_kv W_k)^T / sqrt(d)) phi(x_kv W_v)) W_o)``
    with ``phi = SiLU``, ``d = k``. Leading dimensions broadcast (a user's ``[B, 1, H_u, k]`` against a request's
    items ``[B, N, H_i, k]``), so query-side projections are computed once per user.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        dim = _positive_int("head_dim", dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        q = F.silu(self.query(x_q))
        k = F.silu(self.key(x_kv))
        v = F.silu(self.value(x_kv))
        u = torch.sigmoid(self.gate(x_q))
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)  # [..., P, Q]
        o = self.out(u * torch.matmul(attn, v))
        return self.norm(x_q + o)


def max_similarity(user: torch.Tensor, item: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """``sum_p max_q cos(user[..., p, :], item[..., q, :])`` (ColBERT-style MaxSim), without temperature.

    Args:
        user: ``[..., P, k]`` float.
        item: ``[..., Q, k]`` float (leading dims broadcast with ``user``'s).
        eps: floor of the vector norms (a zero vector has cosine 0 with everything).

    Returns:
        ``[...]``, each value in ``[-P, P]``.
    """
    u = F.normalize(user, dim=-1, eps=eps)
    i = F.normalize(item, dim=-1, eps=eps)
    return torch.matmul(u, i.transpose(-1, -2)).amax(dim=-1).sum(dim=-1)


class RankTower(nn.Module):
    """RankTower scorer for all N candidates of a request in one pass (see the module docstring).

    Args:
        schema: dataset schema (fields, roles, vocabulary sizes, history fields).
        emb_dim: embedding dimension (8 in the LCRON experiments' protocol).
        hidden: hidden width of every gated head's MLP (default 128).
        heads_user: ``H_u``, user sub-space embeddings (default 4).
        heads_item: ``H_i``, item sub-space embeddings (default 4).
        head_dim: ``k``, the width of every sub-space embedding (default 16).
        gate_reduction: reduction ratio ``r`` of the gate MLPs (default 4).
        temperature: initial value of the learnable max-similarity temperature ``tau`` (default 0.2).

    Raises:
        ValueError: a non-positive size or temperature.
    """

    def __init__(
        self,
        schema: DatasetSchema,
        *,
        emb_dim: int = 8,
        hidden: int = 128,
        heads_user: int = 4,
        heads_item: int = 4,
        head_dim: int = 16,
        gate_reduction: int = 4,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        if not (_TAU_MIN <= float(temperature) <= _TAU_MAX):
            raise ValueError(f"temperature must be in [{_TAU_MIN}, {_TAU_MAX}], got {temperature!r}")
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        user_in = enc.user_context_dim + enc.history_dim
        if user_in == 0:
            raise ValueError("RankTower needs at least one user, context or history field for its user tower")
        common = {"head_dim": head_dim, "hidden": hidden, "reduction": gate_reduction}
        self.user_net = MultiHeadGatedNetwork(user_in, heads=heads_user, **common)
        self.item_net = MultiHeadGatedNetwork(enc.item_dim, heads=heads_item, **common)
        self.user_to_item = GatedCrossAttention(head_dim)
        self.item_to_user = GatedCrossAttention(head_dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(float(temperature))))

    @property
    def temperature(self) -> torch.Tensor:
        """The max-similarity temperature ``tau = exp(log_tau)`` (clamped to ``[1e-2, 1e2]``), a 0-d tensor."""
        return self.log_tau.clamp(math.log(_TAU_MIN), math.log(_TAU_MAX)).exp()

    # -- towers (cacheable) ------------------------------------------------------------------------
    def user_multi_embedding(self, batch: RequestBatch) -> torch.Tensor:
        """User sub-space embeddings ``E_u [B, H_u, k]`` (user + context fields + masked-mean history)."""
        x = torch.cat([self.encoder.user_context(batch), self.encoder.pooled_history(batch)], dim=-1)
        return self.user_net(x)

    def encode_items(self, item: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Item sub-space embeddings ``[..., H_i, k]`` for item ids of any shape (``[B, N]`` or a corpus ``[M]``)."""
        return self.item_net(self.encoder.embed_items(item))

    def item_multi_embedding(self, batch: RequestBatch) -> torch.Tensor:
        """Item sub-space embeddings of the candidates ``E_i [B, N, H_i, k]``."""
        return self.item_net(self.encoder.items(batch))

    # -- interaction (per user-item pair) ----------------------------------------------------------
    def cross_attend(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bi-directional gated cross-attention: ``(Ê_u [B, N, H_u, k], Ê_i [B, N, H_i, k])``.

        Args:
            user_emb: ``[B, H_u, k]`` from :meth:`user_multi_embedding`.
            item_emb: ``[B, N, H_i, k]`` from :meth:`item_multi_embedding`, or ``[N, H_i, k]`` (one candidate
                set, e.g. a cached corpus, shared by every request).

        Raises:
            ValueError: shapes that do not fit the model or each other.
        """
        if user_emb.dim() != 3 or user_emb.shape[1:] != (self.user_net.heads, self.user_net.head_dim):
            raise ValueError(
                f"user_emb must be [B, H_u={self.user_net.heads}, k={self.user_net.head_dim}], "
                f"got {tuple(user_emb.shape)}"
            )
        if item_emb.dim() == 3:
            item_emb = item_emb.unsqueeze(0)
        if item_emb.dim() != 4 or item_emb.shape[2:] != (self.item_net.heads, self.item_net.head_dim):
            raise ValueError(
                f"item_emb must be [B, N, H_i={self.item_net.heads}, k={self.item_net.head_dim}] or [N, H_i, k], "
                f"got {tuple(item_emb.shape)}"
            )
        if item_emb.shape[0] not in (1, user_emb.shape[0]):
            raise ValueError(f"item_emb holds {item_emb.shape[0]} requests, user_emb {user_emb.shape[0]}")
        u = user_emb.unsqueeze(1)  # [B, 1, H_u, k]: query-side work once per user
        e_u = self.user_to_item(u, item_emb)  # [B, N, H_u, k]
        e_i = self.item_to_user(item_emb, u)  # [B, N, H_i, k]
        return e_u, e_i

    def score_from_cache(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, N]`` from cached tower outputs: cross-attention, then ``max_similarity / tau``.

        Args and raises as :meth:`cross_attend`.
        """
        e_u, e_i = self.cross_attend(user_emb, item_emb)
        return max_similarity(e_u, e_i) / self.temperature.to(e_u.dtype)

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream)."""
        return self.score_from_cache(self.user_multi_embedding(batch), self.item_multi_embedding(batch))

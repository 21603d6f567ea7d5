r"""RankTower: a two-tower pre-ranking model with multi-head gated towers, cross-attention and max-similarity.

Yan & Li, "RankTower: A Synergistic Framework for Enhancing Two-Tower Pre-Ranking Model", arXiv 2407.12385,
Sec. 3 (the full paper: ``../shared/seeds/004_77323e5ce7e6ee9f.txt``). Shapes: ``B`` requests, ``N``
candidates, ``H_u`` / ``H_i`` user / item sub-spaces, ``k`` sub-space size.

1. **Embedding layer** (Sec. 3.2, :class:`~cascade_ranking.models.embedding.FeatureEncoder`): one embedding per
   field, concatenated per tower into ``X_U`` and ``X_I`` (eq. 1-2). ``emb_dim="log2"`` gives the paper's size
   ``max(floor(log2 V), 16)`` per field (Sec. 5.1.4); continuous features are bucketised into equal-frequency
   bins by the dataset builders (:func:`cascade_ranking.datasets.bucketize.equal_frequency_bins`), so the
   model sees ids only. Our addition: the user tower also reads the masked mean of the history embeddings
   (as DSSM), since our datasets carry a behaviour history the paper's feature list does not describe.
2. **Multi-Head Gated Network** (Sec. 3.3, eq. 3-4, :class:`MultiHeadGatedNetwork`): one MLP of ``layers``
   linear layers (ReLU between, the paper searches 1-4) maps ``X`` to ``H k`` values, read as ``H`` sub-spaces
   of size ``k``; it is multiplied element-wise by ``sigmoid(gMLP(sg(X)))``, a two-layer gate MLP with
   reduction ratio ``r`` (``in -> max(1, in // r) -> H k``) whose input is *detached* (the paper: "the input
   embedding does not receive gradients from the gating network").
3. **Gated Cross-Attention Network** (Sec. 3.4, eq. 5-12, :class:`GatedCrossAttention`): a Gated Attention Unit
   whose queries come from one tower and keys and values from the other:

   .. math::

       Q = \phi(X_Q W_Q),\ K = \phi(X_K W_K),\ V = \phi(X_V W_V),\ U = \sigma(X_Q W_U) \\
       \mathcal E = \mathrm{LayerNorm}\big(X_Q + (U \odot \mathrm{softmax}(Q K^\top / \sqrt{d_k})\, V) W_o\big)

   User sub-spaces attend to each candidate's item sub-spaces (eq. 5) and item sub-spaces to the user's (eq. 6),
   both from the towers' outputs (parallel branches), each direction with its own parameters.
4. **Maximum Similarity Layer** (Sec. 3.5, eq. 13): ``s = sum_p max_q cos(E_u^p, E_i^q) / tau`` with a
   learnable temperature ``tau = exp(log_tau)``.

**Serving split** (Sec. 3, the paper's decoupling): :meth:`RankTower.user_multi_embedding` (once per request)
and :meth:`RankTower.item_multi_embedding` / :meth:`RankTower.encode_items` (once per item, cacheable) hold the
towers; :meth:`RankTower.score_from_cache` runs only the cross-attention and the max-similarity per pair.
``forward`` is exactly ``score_from_cache(user, items)``.

**Where the paper is silent (our choices)**: ``phi = SiLU`` (the GAU's activation, Hua et al., ICML 2022);
``d_k = k``, single-head attention with biases, one cross-attention layer per direction; the gate's reduction
is relative to its input width (SENet style); the MLP's last layer is linear; ``tau`` starts at 0.2, clamped to
``[1e-2, 1e2]``; cosine with ``eps = 1e-6``. Sizes: defaults ``H_u = H_i = 4``, ``k = 16``, ``r = 4``,
``layers = 2``, ``hidden = 128`` sit inside the paper's search ranges (``H`` 2-10, units 32-256, layers 1-4);
the pre-ranking benchmark's grid searches them on validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder, feed_forward, mlp_forward

__all__ = ["GatedCrossAttention", "MultiHeadGatedNetwork", "RankTower", "max_similarity"]

#: Bounds of the learnable temperature (log-space clamp keeps the logits finite in float16/32).
_TAU_MIN, _TAU_MAX = 1e-2, 1e2


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class MultiHeadGatedNetwork(nn.Module):
    """``H`` gated sub-spaces from one input vector (eq. 3-4): ``[..., in] -> [..., H, k]``.

    ``e^h = MLP(x)^h * sigmoid(gMLP(sg(x)))^h`` with ``MLP = Linear(in, hidden) -> ReLU -> ... -> Linear(., H k)``
    (``layers`` linear layers; ``layers = 1`` is one linear map), ``^h`` the ``h``-th block of ``k`` values, and
    ``gMLP = Linear(in, max(1, in // r)) -> ReLU -> Linear(., H k)`` applied to the detached input.

    Args:
        in_dim: input width (``> 0``).
        heads: ``H``.
        head_dim: ``k``.
        hidden: width of the MLP's hidden layers.
        reduction: gate reduction ratio ``r``.
        layers: number of linear layers of the MLP (the paper searches 1-4).

    Raises:
        ValueError: a non-positive size.
    """

    def __init__(self, in_dim: int, *, heads: int, head_dim: int, hidden: int, reduction: int, layers: int = 2) -> None:
        super().__init__()
        in_dim = _positive_int("input width", in_dim)
        self.heads = _positive_int("heads", heads)
        self.head_dim = _positive_int("head_dim", head_dim)
        hidden = _positive_int("hidden", hidden)
        reduction = _positive_int("gate_reduction", reduction)
        layers = _positive_int("layers", layers)
        out = self.heads * self.head_dim
        self.mlp = feed_forward([in_dim, *([hidden] * (layers - 1)), out])
        squeeze = max(1, in_dim // reduction)
        self.gate = nn.Sequential(nn.Linear(in_dim, squeeze), nn.ReLU(), nn.Linear(squeeze, out), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., H, k]``; the gate sees ``x.detach()``."""
        lead = x.shape[:-1]
        mlp = mlp_forward(self.mlp, x).view(*lead, self.heads, self.head_dim)
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
        emb_dim: embedding size per field, or ``"log2"`` (the paper's ``max(floor(log2 V), 16)``).
        hidden: width of the hidden layers of the gated networks' MLPs (default 128).
        heads_user: ``H_u``, user sub-space embeddings (default 4).
        heads_item: ``H_i``, item sub-space embeddings (default 4).
        head_dim: ``k``, the width of every sub-space embedding (default 16).
        gate_reduction: reduction ratio ``r`` of the gate MLPs (default 4).
        layers: linear layers of each Multi-Head Gated Network's MLP (default 2; the paper searches 1-4).
        temperature: initial value of the learnable max-similarity temperature ``tau`` (default 0.2).

    Raises:
        ValueError: a non-positive size or temperature.
    """

    def __init__(
        self,
        schema: DatasetSchema,
        *,
        emb_dim: int | str = 8,
        hidden: int = 128,
        heads_user: int = 4,
        heads_item: int = 4,
        head_dim: int = 16,
        gate_reduction: int = 4,
        layers: int = 2,
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
        common = {"head_dim": head_dim, "hidden": hidden, "reduction": gate_reduction, "layers": layers}
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

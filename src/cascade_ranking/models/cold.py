r"""COLD: a non-decoupled pre-ranking MLP over all feature embeddings, with SE feature gating.

Wang et al., "COLD: Towards the Next Generation of Pre-Ranking System", DLP-KDD 2020 (Sec. 3.1): unlike a
two-tower model, the pre-ranking network reads the user, context, behaviour and candidate features together,
so it can model their interactions; a Squeeze-and-Excitation block (Hu et al., CVPR 2018) weighs the feature
groups, ``s = sigmoid(W [e_1, ..., e_M] + b)`` with one weight per group, ``e_m <- s_m e_m`` (COLD uses the
weights to select features for serving; we keep the gating in the model). The COLD row of RankTower's
comparison (Yan & Li 2023, Table 1).

Groups (``M``, each of width ``E`` = the embedding dim): every user and context field, every history field
(masked mean over the valid history slots, as :class:`~cascade_ranking.models.MLP`) and every item field.
Scorer ``Linear(M E, h) -> ReLU -> Linear(h, h/2) -> ReLU -> Linear(h/2, h/4) -> ReLU -> Linear(h/4, 1)``
with ``h = hidden`` (COLD's 1024-512-256 scaled to this package's sizes, like the other stage models). The SE
weights are computed per candidate (the item groups differ between candidates).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder, feed_forward

__all__ = ["COLD"]


class COLD(nn.Module):
    """COLD pre-ranking scorer; all N candidates of a request in one pass.

    Args:
        schema: dataset schema.
        emb_dim: embedding dimension ``E`` (8 as the other stage models).
        hidden: first hidden width ``h``; layers ``h -> h/2 -> h/4 -> 1``.
        se: apply the SE feature gating (default ``True``).

    Raises:
        ValueError: ``hidden < 4`` or ``emb_dim`` not positive.
    """

    def __init__(self, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128, se: bool = True) -> None:
        super().__init__()
        if int(hidden) != hidden or hidden < 4:
            raise ValueError(
                f"hidden must be an integer >= 4 (layers hidden -> hidden/2 -> hidden/4 -> 1), got {hidden!r}"
            )
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        in_dim = enc.user_context_dim + enc.history_dim + enc.item_dim
        self.groups = in_dim // enc.require_uniform("COLD")
        self.se = nn.Linear(in_dim, self.groups) if se else None
        self.mlp = feed_forward([in_dim, hidden, hidden // 2, hidden // 4, 1])

    def feature_weights(self, batch: RequestBatch) -> torch.Tensor:
        """SE weights ``[B, N, M]`` in ``(0, 1)`` (all ones without SE)."""
        x = self._inputs(batch)
        if self.se is None:
            return x.new_ones((*x.shape[:2], self.groups))
        return torch.sigmoid(self.se(x))

    def _inputs(self, batch: RequestBatch) -> torch.Tensor:
        c = self.encoder.items(batch)  # [B, N, I*E]
        req = torch.cat([self.encoder.user_context(batch), self.encoder.pooled_history(batch)], dim=-1)
        return torch.cat([req.unsqueeze(1).expand(-1, c.shape[1], -1), c], dim=-1)  # [B, N, M*E]

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream)."""
        x = self._inputs(batch)
        if self.se is not None:
            b, n, width = x.shape
            weights = torch.sigmoid(self.se(x))  # [B, N, M]
            x = (x.view(b, n, self.groups, width // self.groups) * weights.unsqueeze(-1)).view(b, n, width)
        return self.mlp(x).squeeze(-1)

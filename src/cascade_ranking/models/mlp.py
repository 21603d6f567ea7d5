"""Pre-ranking MLP: a non-sequential per-candidate network over user, pooled history and item features.

The middle stage of the three-stage LCRON experiments (Wang et al., ICML 2025; sizes as released):
``concat(user/context emb, mean of valid history emb, candidate emb)`` ->
``Linear(in, h) -> ReLU -> Linear(h, h/2) -> ReLU -> Linear(h/2, h/4) -> ReLU -> Linear(h/4, 1)``, ``h = 128``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder, feed_forward, mlp_forward

__all__ = ["MLP"]


class MLP(nn.Module):
    """Per-candidate MLP scorer; all N candidates in one pass.

    Args:
        schema: dataset schema.
        emb_dim: embedding dimension (8 as released).
        hidden: first hidden width ``h`` (128 as released); layers ``h -> h/2 -> h/4 -> 1``.

    Raises:
        ValueError: ``hidden < 4`` or ``emb_dim`` not positive.
    """

    def __init__(self, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128) -> None:
        super().__init__()
        if int(hidden) != hidden or hidden < 4:
            raise ValueError(
                f"hidden must be an integer >= 4 (layers hidden -> hidden/2 -> hidden/4 -> 1), got {hidden!r}"
            )
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        in_dim = enc.user_context_dim + enc.history_dim + enc.item_dim
        self.mlp = feed_forward([in_dim, hidden, hidden // 2, hidden // 4, 1])

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream).

        The first layer's request part (user/context and pooled history) is computed once per request
        (:func:`~.embedding.mlp_forward`), not once per candidate.
        """
        enc = self.encoder.encode(batch)
        req = torch.cat([enc.user_context, self.encoder.pooled_history(batch, enc.history)], dim=-1)
        return mlp_forward(self.mlp, enc.require_items(), request=req).squeeze(-1)

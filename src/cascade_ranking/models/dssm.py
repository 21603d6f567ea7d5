"""DSSM two-tower retrieval model: ``score(u, i) = <user_tower(u), item_tower(i)>``.

Huang et al., "Learning Deep Structured Semantic Models for Web Search using Clickthrough Data", CIKM 2013;
the two-tower form used for retrieval in RecFlow (Liu et al., ICLR 2025) and the LCRON experiments
(Wang et al., ICML 2025). Sizes as released with LCRON: each tower is
``Linear(in, h) -> ReLU -> Linear(h, h/2) -> ReLU -> Linear(h/2, h/4)`` with ``h = 128`` (output 32, no
final activation); the user tower reads the user and context fields plus the mean of the valid history
embeddings, the item tower reads every item field.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .embedding import FeatureEncoder, feed_forward, mlp_forward

__all__ = ["DSSM"]


class DSSM(nn.Module):
    """Two-tower model; scores all N candidates of a request with one batched dot product.

    Args:
        schema: dataset schema (fields, roles, vocabulary sizes).
        emb_dim: embedding dimension (8 as released).
        hidden: width ``h`` of the first tower layer (128 as released); towers are ``h -> h/2 -> h/4``.

    Raises:
        ValueError: ``hidden < 4`` or ``emb_dim`` not positive.
    """

    def __init__(self, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128) -> None:
        super().__init__()
        if int(hidden) != hidden or hidden < 4:
            raise ValueError(
                f"hidden must be an integer >= 4 (towers are hidden -> hidden/2 -> hidden/4), got {hidden!r}"
            )
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        sizes = [hidden, hidden // 2, hidden // 4]
        self._embedding_dim = sizes[-1]
        self.user_tower = feed_forward([enc.user_context_dim + enc.history_dim, *sizes])
        self.item_tower = feed_forward([enc.item_dim, *sizes])

    @property
    def embedding_dim(self) -> int:
        """Width ``D`` of the tower outputs (``hidden // 4``)."""
        return self._embedding_dim

    def user_embedding(self, batch: RequestBatch) -> torch.Tensor:
        """User-tower output ``[B, D]`` (user + context fields + masked-mean history)."""
        x = torch.cat([self.encoder.user_context(batch), self.encoder.pooled_history(batch)], dim=-1)
        return self.user_tower(x)

    def encode_items(self, item: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item-tower output ``[..., D]`` for item field ids of any shape (``[B, N]`` or a corpus ``[M]``)."""
        return self.item_tower(self.encoder.embed_items(item))

    def item_embedding(self, batch: RequestBatch) -> torch.Tensor:
        """Item-tower output for the candidates: ``[B, N, D]``."""
        return self.item_tower(self.encoder.items(batch))

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]``: ``<user_embedding[b], item_embedding[b, n]>`` (padded slots hold a score too)."""
        enc = self.encoder.encode(batch)  # one lookup per table for the user and the item tower
        u = self.user_tower(torch.cat([enc.user_context, self.encoder.pooled_history(batch, enc.history)], dim=-1))
        v = mlp_forward(self.item_tower, enc.require_items())
        return torch.bmm(v, u.unsqueeze(-1)).squeeze(-1)

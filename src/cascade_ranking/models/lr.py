r"""LR: logistic regression over one-hot features and their small pairwise crosses (a pre-ranking baseline).

The LR row of RankTower's comparison (Yan & Li 2023, arXiv 2407.12385, Table 1), the classic first
pre-ranking model: a linear model over one-hot (categorical) features, i.e. one scalar weight per feature
value, summed; trained with the cascade loss of the run (BCE in the pre-ranking benchmark, which makes it a
logistic regression). The paper does not list its feature set; ours, for a request ``b`` and candidate ``n``:

.. math::

    s_{bn} = w_0 + \sum_{f \in U \cup C} w_f[x_{bf}] + \sum_{f \in I} w_f[c_{bnf}]
        + \sum_{h \in H} \overline{w_h[x_{blh}]}^{\,l}
        + \sum_{(f, g) \in X} w_{fg}[x_{bf}, c_{bng}]
        + \sum_{(h, g) \in X_H} \overline{w_{hg}[x_{blh}, c_{bng}]}^{\,l}

* first order: one weight per value of every user (``U``), context (``C``) and item (``I``) field, and per
  value of every history field (``H``; its own table, averaged over the valid history slots ``l``: a
  normalised bag of past items). User, context and history terms are constant within a request, so they
  shift every candidate alike and only matter to the calibration of pointwise losses;
* crosses ``X``: every (user or context field, item field) pair whose joint vocabulary
  ``vocab_f * vocab_g`` is at most ``max_cross_vocab`` (default 1024; e.g. occupation x genre, hour x
  genre) gets a weight per value pair; crosses ``X_H``: every history field with the item field whose table
  it names (e.g. history genre x candidate genre), within the same bound, averaged over the history.
  These are the hand-made cross features of production LR rankers, and the only terms that make the
  candidate order personal. ``max_cross_vocab = 0`` gives the pure first-order model.

Id 0 (padding / unknown) has weight 0 everywhere, also in crosses (a pair with a 0 id maps to the padding
row). Every weight starts at 0 (the model starts as a constant; the problem is convex under BCE).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch

__all__ = ["LR"]


def _table(rows: int) -> nn.Embedding:
    t = nn.Embedding(rows, 1, padding_idx=0)
    nn.init.zeros_(t.weight)
    return t


def _pair_index(a: torch.Tensor, b: torch.Tensor, vocab_b: int) -> torch.Tensor:
    """Row of the value pair ``(a, b)`` in a cross table: ``a * vocab_b + b``, 0 where either id is 0."""
    return torch.where((a > 0) & (b > 0), a * vocab_b + b, torch.zeros_like(b))


class LR(nn.Module):
    """Logistic regression scorer (see the module docstring); all N candidates in one pass.

    Args:
        schema: dataset schema (fields, roles, vocabulary sizes, history fields).
        emb_dim, hidden: unused (the common :func:`~cascade_ranking.models.build_model` interface).
        max_cross_vocab: largest joint vocabulary of a cross feature (0 = no crosses).

    Raises:
        ValueError: ``max_cross_vocab`` negative.
    """

    def __init__(
        self, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128, max_cross_vocab: int = 1024
    ):
        super().__init__()
        if isinstance(max_cross_vocab, bool) or int(max_cross_vocab) != max_cross_vocab or max_cross_vocab < 0:
            raise ValueError(f"max_cross_vocab must be a non-negative integer, got {max_cross_vocab!r}")
        vocab = {f.name: f.vocab_size for f in schema.features}
        self.request_fields = [(f.role, f.name) for f in schema.features if f.role in ("user", "context")]
        self.item_fields = [f.name for f in schema.features if f.role == "item"]
        self.history_fields = [(h.name, h.item_field) for h in schema.history]
        self.first = nn.ModuleDict({f.name: _table(f.vocab_size) for f in schema.features})
        self.history_first = nn.ModuleDict({h: _table(vocab[f]) for h, f in self.history_fields})
        self.crosses = [
            (role, f, g)
            for role, f in self.request_fields
            for g in self.item_fields
            if vocab[f] * vocab[g] <= max_cross_vocab
        ]
        self.history_crosses = [(h, f) for h, f in self.history_fields if vocab[f] ** 2 <= max_cross_vocab]
        self.cross = nn.ModuleDict({f"{f}__x__{g}": _table(vocab[f] * vocab[g]) for _, f, g in self.crosses})
        self.history_cross = nn.ModuleDict({f"{h}__x__{f}": _table(vocab[f] ** 2) for h, f in self.history_crosses})
        self.vocab = vocab
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]`` (padded slots hold a score too; mask them downstream)."""
        feats = {"user": batch.user, "context": batch.context}
        hist_mask = batch.history_mask.to(self.bias.dtype)  # [B, L]
        hist_count = hist_mask.sum(-1).clamp_min(1.0)  # [B]
        request = self.bias.expand(batch.batch_size)
        for role, f in self.request_fields:
            request = request + self.first[f](feats[role][f]).squeeze(-1)
        for h, _ in self.history_fields:
            w = self.history_first[h](batch.history[h]).squeeze(-1)  # [B, L]
            request = request + (w * hist_mask).sum(-1) / hist_count
        score = request.unsqueeze(-1).expand(batch.mask.shape)
        for g in self.item_fields:
            score = score + self.first[g](batch.item[g]).squeeze(-1)
        for role, f, g in self.crosses:
            idx = _pair_index(feats[role][f].unsqueeze(-1), batch.item[g], self.vocab[g])  # [B, N]
            score = score + self.cross[f"{f}__x__{g}"](idx).squeeze(-1)
        for h, f in self.history_crosses:
            idx = _pair_index(batch.history[h].unsqueeze(1), batch.item[f].unsqueeze(-1), self.vocab[f])  # [B, N, L]
            w = self.history_cross[f"{h}__x__{f}"](idx).squeeze(-1)
            score = score + (w * hist_mask.unsqueeze(1)).sum(-1) / hist_count.unsqueeze(-1)
        return score

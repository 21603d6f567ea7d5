"""Feature encoder (one embedding table per categorical field, history sharing item tables) and MLP blocks.

Layout (``E`` = embedding dim, every table has ``padding_idx=0`` so id 0 embeds to a zero vector that
never receives a gradient):

* user/context: ``[B, (U + C) * E]`` — the user fields, then the context fields, in schema order;
* history: ``[B, L, H * E]`` — the history fields in schema order, each looked up in the table of the
  item field it names (``HistoryField.item_field``), as in DIN (Zhou et al., KDD 2018, Sec. 4.3) and the
  LCRON release, where the behaviour sequence and the candidates share their item embeddings;
* candidates: ``[..., I * E]`` — the item fields in schema order (any leading shape, e.g. ``[B, N]`` or
  a corpus ``[M]``).

Tables are initialised like ``torch.nn.Embedding`` (standard normal), as in the LCRON release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data.schema import DatasetSchema, RequestBatch

__all__ = ["FeatureEncoder", "feed_forward"]


class FeatureEncoder(nn.Module):
    """Embedding tables for every categorical field of a :class:`DatasetSchema`.

    Args:
        schema: the dataset schema (fields, roles, vocabulary sizes, history fields).
        emb_dim: embedding dimension ``E`` (8 in the LCRON experiments).

    Attributes:
        user_fields, context_fields, item_fields: field names per role, in schema order.
        history_fields: history field names, in schema order.
        history_item_fields: for each history field, the item field whose table it shares.
        user_context_dim, history_dim, item_dim: output widths ``(U + C) * E``, ``H * E``, ``I * E``.

    Raises:
        ValueError: ``emb_dim`` is not a positive integer.
    """

    def __init__(self, schema: DatasetSchema, emb_dim: int = 8) -> None:
        super().__init__()
        if int(emb_dim) != emb_dim or emb_dim <= 0:
            raise ValueError(f"emb_dim must be a positive integer, got {emb_dim!r}")
        self.emb_dim = int(emb_dim)
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, self.emb_dim, padding_idx=0) for f in schema.features}
        )
        self.user_fields = tuple(f.name for f in schema.fields_with_role("user"))
        self.context_fields = tuple(f.name for f in schema.fields_with_role("context"))
        self.item_fields = tuple(f.name for f in schema.fields_with_role("item"))
        self.history_fields = tuple(h.name for h in schema.history)
        self.history_item_fields = tuple(h.item_field for h in schema.history)
        self.user_context_dim = (len(self.user_fields) + len(self.context_fields)) * self.emb_dim
        self.history_dim = len(self.history_fields) * self.emb_dim
        self.item_dim = len(self.item_fields) * self.emb_dim

    # -- lookups ---------------------------------------------------------------------------------
    def _lookup(self, table: str, ids: torch.Tensor, what: str) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{what} must hold integer ids (int64), got {ids.dtype}")
        return self.tables[table](ids)

    def user_context(self, batch: RequestBatch) -> torch.Tensor:
        """User then context field embeddings, concatenated: ``[B, (U + C) * E]``.

        Raises:
            KeyError: the batch lacks a user or context field of the schema.
        """
        b = batch.batch_size
        parts = []
        for role, names, feats in (
            ("user", self.user_fields, batch.user),
            ("context", self.context_fields, batch.context),
        ):
            for name in names:
                ids = _get(feats, name, role)
                if ids.shape != (b,):
                    raise ValueError(f"batch.{role}[{name!r}] must be [B]=[{b}], got {tuple(ids.shape)}")
                parts.append(self._lookup(name, ids, f"batch.{role}[{name!r}]"))
        if not parts:
            return self._empty((b, 0))
        return torch.cat(parts, dim=-1)

    def history(self, batch: RequestBatch) -> torch.Tensor:
        """History embeddings ``[B, L, H * E]`` (item tables shared); padded slots are whatever id they hold.

        Use ``batch.history_mask`` to ignore padded slots (id 0 already embeds to zeros).

        Raises:
            KeyError: the batch lacks a history field of the schema.
        """
        shape = tuple(batch.history_mask.shape)
        if len(shape) != 2 or shape[0] != batch.batch_size:
            raise ValueError(f"batch.history_mask must be [B, L] with B={batch.batch_size}, got {shape}")
        parts = []
        for name, item_field in zip(self.history_fields, self.history_item_fields):
            ids = _get(batch.history, name, "history")
            if tuple(ids.shape) != shape:
                raise ValueError(f"batch.history[{name!r}] has shape {tuple(ids.shape)}, history_mask has {shape}")
            parts.append(self._lookup(item_field, ids, f"batch.history[{name!r}]"))
        if not parts:
            return self._empty((*shape, 0))
        return torch.cat(parts, dim=-1)

    def pooled_history(self, batch: RequestBatch) -> torch.Tensor:
        """Mean of the history embeddings over valid slots: ``[B, H * E]``; zeros for an empty history.

        The LCRON release divides the sum over slots by the history length; with ``padding_idx=0`` that
        is this masked mean (the release yields NaN for an empty history, this gives zeros).
        """
        h = self.history(batch)
        m = batch.history_mask.to(h.dtype)
        total = torch.einsum("bld,bl->bd", h, m)
        return total / m.sum(-1, keepdim=True).clamp_min(1.0)

    def embed_items(self, item: Mapping[str, torch.Tensor], fields: Sequence[str] | None = None) -> torch.Tensor:
        """Item field embeddings concatenated: ids ``[...]`` per field -> ``[..., len(fields) * E]``.

        Args:
            item: item field ids, each of the same shape (``[B, N]`` candidates, or ``[M]`` a corpus).
            fields: item fields to embed, in this order; default all item fields in schema order.

        Raises:
            KeyError: a field is missing from ``item`` or is not an item field.
        """
        names = self.item_fields if fields is None else tuple(fields)
        unknown = [n for n in names if n not in self.item_fields]
        if unknown:
            raise KeyError(f"{unknown} are not item fields; item fields: {list(self.item_fields)}")
        parts, shape = [], None
        for name in names:
            ids = _get(item, name, "item")
            if shape is None:
                shape = tuple(ids.shape)
            elif tuple(ids.shape) != shape:
                raise ValueError(f"batch.item[{name!r}] has shape {tuple(ids.shape)}, other item fields {shape}")
            parts.append(self._lookup(name, ids, f"batch.item[{name!r}]"))
        return torch.cat(parts, dim=-1)

    def items(self, batch: RequestBatch, fields: Sequence[str] | None = None) -> torch.Tensor:
        """Candidate embeddings ``[B, N, len(fields) * E]`` (default: all item fields, schema order)."""
        out = self.embed_items(batch.item, fields)
        if tuple(out.shape[:2]) != tuple(batch.mask.shape):
            raise ValueError(f"batch.item fields are {tuple(out.shape[:2])}, batch.mask is {tuple(batch.mask.shape)}")
        return out

    def _empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        w = next(iter(self.tables.values())).weight
        return w.new_zeros(shape)


def _get(feats: Mapping[str, torch.Tensor], name: str, role: str) -> torch.Tensor:
    try:
        return feats[name]
    except KeyError:
        raise KeyError(
            f"batch.{role} has no field {name!r} (it has {sorted(feats)}); does it match the schema?"
        ) from None


def feed_forward(sizes: Sequence[int], *, final_activation: bool = False) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> ReLU -> ... -> Linear(sizes[-2], sizes[-1])`` (ReLU between layers).

    Raises:
        ValueError: fewer than two sizes, or a non-positive size.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be >= 2 positive integers, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)

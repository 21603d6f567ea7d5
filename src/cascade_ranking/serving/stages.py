"""Serving stages: each cascade stage split into what runs once per request and what is cached once per item.

A stage model *decouples* when its score is a function of a user-side part computed once per request and an
item-side part computed once per item (DESIGN.md section 1.6):

* ``"two_tower"`` (DSSM; Huang et al., CIKM 2013): ``score = <user_embedding(u), encode_items(i)>``; the item
  vectors ``[M, D]`` are cached (and indexed by FAISS when the stage is retrieval);
* ``"multi_embedding"`` (RankTower; Yan & Li 2023, Sec. 3, the paper's serving path): the user and item
  multi-embeddings come from the towers (``user_multi_embedding``, ``encode_items``; item side ``[M, H_i, k]``
  cached) and only the light gated cross-attention and max-similarity run per pair (``score_from_cache``);
* ``"full"`` (DIN, MLP, any other model): the model scores a request's candidates from their item fields.

Each part is an ``nn.Module`` taking tensors only (:class:`UserPart`, :class:`CachedScorer`, :class:`FullScorer`),
so that the same modules serve from a run folder and are what :mod:`.export` writes with ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..types import RequestBatch
from .requests import make_batch

__all__ = [
    "CachedScorer",
    "FullScorer",
    "MultiEmbeddingModel",
    "ServingStage",
    "StageKind",
    "TwoTowerModel",
    "UserPart",
    "build_stage",
    "stage_kind",
]

StageKind = Literal["two_tower", "multi_embedding", "full"]

#: Items encoded per chunk when caching the item side of a large catalogue.
ITEM_CHUNK = 65_536


@runtime_checkable
class TwoTowerModel(Protocol):
    """A model scoring ``<user_embedding(batch) [B, D], encode_items(items) [..., D]>`` (DSSM)."""

    def user_embedding(self, batch: RequestBatch) -> torch.Tensor: ...

    def encode_items(self, item: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class MultiEmbeddingModel(Protocol):
    """A model scoring ``score_from_cache(user_multi_embedding(batch), encode_items(items))`` (RankTower)."""

    def user_multi_embedding(self, batch: RequestBatch) -> torch.Tensor: ...

    def encode_items(self, item: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def score_from_cache(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor: ...


def stage_kind(model: nn.Module) -> StageKind:
    """How a stage model decouples: ``"multi_embedding"``, ``"two_tower"`` or ``"full"`` (see the module docstring)."""
    if isinstance(model, MultiEmbeddingModel):
        return "multi_embedding"
    if isinstance(model, TwoTowerModel):
        return "two_tower"
    return "full"


class UserPart(nn.Module):
    """The per-request part of a decoupled model: features -> ``[B, D]`` (two-tower) or ``[B, H_u, k]``.

    Args:
        model: a :class:`TwoTowerModel` or :class:`MultiEmbeddingModel`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.multi = isinstance(model, MultiEmbeddingModel)

    def forward(
        self,
        user: dict[str, torch.Tensor],
        context: dict[str, torch.Tensor],
        history: dict[str, torch.Tensor],
        history_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``user``/``context`` ``[B]`` per field, ``history`` ``[B, L]`` per field, ``history_mask`` ``[B, L]``."""
        empty = torch.zeros((history_mask.shape[0], 0), dtype=torch.bool)
        batch = make_batch(user, context, history, history_mask, {}, empty)
        model: Any = self.model
        return model.user_multi_embedding(batch) if self.multi else model.user_embedding(batch)


class CachedScorer(nn.Module):
    """RankTower's per-pair part: ``score_from_cache(user_emb [B, H_u, k], item_emb [B, K, H_i, k]) -> [B, K]``.

    Args:
        model: a :class:`MultiEmbeddingModel`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, K]``."""
        model: Any = self.model
        return model.score_from_cache(user_emb, item_emb)


class FullScorer(nn.Module):
    """A whole stage model over given candidates: features and ``item`` ``[B, K]`` per field, ``mask`` ``[B, K]``.

    Args:
        model: any stage model (``model(batch) -> [B, N]``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        user: dict[str, torch.Tensor],
        context: dict[str, torch.Tensor],
        history: dict[str, torch.Tensor],
        history_mask: torch.Tensor,
        item: dict[str, torch.Tensor],
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Scores ``[B, K]`` (padded slots hold a score too)."""
        return self.model(make_batch(user, context, history, history_mask, item, mask))


@dataclass
class ServingStage:
    """One stage ready to serve.

    Attributes:
        name: stage name (``"retrieval"``, ``"prerank"``, ``"rank"``).
        kind: how it decouples (:data:`StageKind`).
        user: two-tower / multi-embedding: features -> user side (a :class:`UserPart` or its export); else None.
        items: two-tower: ``[M, D]``; multi-embedding: ``[M, H_i, k]`` float item cache, row = catalogue row.
        scorer: multi-embedding: a :class:`CachedScorer`; full: a :class:`FullScorer` (or their exports).
    """

    name: str
    kind: StageKind
    user: Callable[..., torch.Tensor] | None
    items: torch.Tensor | None
    scorer: Callable[..., torch.Tensor] | None

    def user_side(self, features: dict) -> torch.Tensor | None:
        """The per-request part (``None`` for a full stage); ``features`` as :meth:`.Requests.tensors`."""
        if self.user is None:
            return None
        return self.user(features["user"], features["context"], features["history"], features["history_mask"])

    def score(
        self, features: dict, user_side: torch.Tensor | None, rows: torch.Tensor, catalogue: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Scores ``[B, K]`` of catalogue ``rows`` ``[B, K]`` (int64, ``-1`` = padding, scored as row 0).

        Args:
            features: the requests' tensors (:meth:`.Requests.tensors`).
            user_side: :meth:`user_side` of the same requests.
            rows: catalogue rows per request.
            catalogue: item field -> ``[M]`` int64 ids.
        """
        safe = rows.clamp_min(0)
        if self.kind == "two_tower":
            assert self.items is not None and user_side is not None
            return torch.bmm(self.items[safe], user_side.unsqueeze(-1)).squeeze(-1)
        if self.kind == "multi_embedding":
            assert self.items is not None and self.scorer is not None
            return self.scorer(user_side, self.items[safe])
        assert self.scorer is not None
        item = {name: ids[safe] for name, ids in catalogue.items()}
        f = features
        return self.scorer(f["user"], f["context"], f["history"], f["history_mask"], item, rows >= 0)


@torch.no_grad()
def encode_catalogue(model: nn.Module, catalogue: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``model.encode_items`` over the catalogue (``[M]`` ids per field) in chunks: ``[M, ...]`` float."""
    size = next(iter(catalogue.values())).shape[0]
    encode: Any = model.encode_items
    parts = [encode({n: a[s : s + ITEM_CHUNK] for n, a in catalogue.items()}) for s in range(0, size, ITEM_CHUNK)]
    return torch.cat(parts).float()


def build_stage(name: str, model: nn.Module, catalogue: Mapping[str, torch.Tensor]) -> ServingStage:
    """A :class:`ServingStage` from a trained stage model, with its item side cached over the catalogue.

    Args:
        name: the stage name.
        model: the stage model (``eval()`` mode is set here).
        catalogue: item field -> ``[M]`` int64 ids (:meth:`.Catalogue.fields` as tensors).
    """
    model = model.eval()
    kind = stage_kind(model)
    if kind == "full":
        return ServingStage(name, kind, user=None, items=None, scorer=FullScorer(model))
    items = encode_catalogue(model, catalogue)
    scorer = CachedScorer(model) if kind == "multi_embedding" else None
    return ServingStage(name, kind, user=UserPart(model), items=items, scorer=scorer)

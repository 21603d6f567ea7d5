"""``recommend(requests, k)``: the trained cascade over the whole item catalogue.

For each request (DESIGN.md section 1.6; the cascade of Wang et al., "LCRON", ICML 2025, Sec. 2, with the
catalogue as the candidate set):

1. **retrieval** keeps its top ``keep[0]`` catalogue items — from the FAISS index over its cached item vectors
   when it is a two-tower model (:mod:`.index`), else by scoring every item — never an excluded item (the
   request's ``exclude`` list and, with ``exclude_history``, the items of its behaviour history);
2. each later stage scores only what the stage before kept, from its cached item side where the model
   decouples (:mod:`.stages`), and keeps its top ``keep[i]``;
3. the answer is the last stage's top ``k``, best first, with every stage's score of each item.

Serving keep sizes are chosen at serving time (training's keep sizes were for the 40-50 logged candidates of a
request): by default :func:`default_keep`. Ties are broken as FAISS and ``torch.topk`` break them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..data.schema import DatasetSchema
from ..types import check_keep
from .catalogue import Catalogue
from .index import IndexOptions, ItemIndex
from .requests import Requests
from .stages import ServingStage, build_stage

__all__ = ["Recommendations", "Recommender", "default_keep"]

log = logging.getLogger(__name__)

#: Default serving keep sizes by number of stages (capped by the catalogue size).
DEFAULT_KEEP = {1: (100,), 2: (500, 100), 3: (1000, 300, 100)}


def default_keep(num_stages: int, catalogue_size: int) -> tuple[int, ...]:
    """Serving keep sizes: 2 stages ``(500, 100)``, 3 stages ``(1000, 300, 100)`` (``100`` per stage after the
    third), each capped at ``catalogue_size - i`` so they stay strictly decreasing on a small catalogue."""
    base = DEFAULT_KEEP.get(num_stages) or tuple(1000 // (i + 1) for i in range(num_stages))
    return tuple(max(1, min(k, catalogue_size - i)) for i, k in enumerate(base))


@dataclass(frozen=True)
class Recommendations:
    """The answer to ``B`` requests.

    Attributes:
        request_id: ``[B]`` int64.
        item: ``[B, k]`` int64 key ids of the recommended items, best first (0 where fewer than ``k`` remained).
        valid: ``[B, k]`` bool, the slots holding an item.
        scores: stage name -> ``[B, k]`` float32, that stage's score of each item (``-inf`` where not valid).
        kept: stage name -> ``[B, keep_i]`` int64 catalogue rows the stage kept, best first (``-1`` = none).
        latency_ms: stage name -> milliseconds the stage took for the whole batch.
    """

    request_id: np.ndarray
    item: np.ndarray
    valid: np.ndarray
    scores: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_table(self, key: str) -> pa.Table:
        """One row per (request, recommended item): ``request_id``, ``rank`` (1-based), ``item.<key>``,
        ``score.<stage>`` per stage."""
        b, r = np.nonzero(self.valid)
        columns = {
            "request_id": pa.array(self.request_id[b], pa.int64()),
            "rank": pa.array(r + 1, pa.int32()),
            f"item.{key}": pa.array(self.item[b, r], pa.int64()),
        }
        columns.update({f"score.{n}": pa.array(s[b, r], pa.float32()) for n, s in self.scores.items()})
        return pa.table(columns)


def _concat(parts: Sequence[Recommendations]) -> Recommendations:
    if len(parts) == 1:
        return parts[0]
    stages = list(parts[0].scores)
    return Recommendations(
        request_id=np.concatenate([p.request_id for p in parts]),
        item=np.concatenate([p.item for p in parts]),
        valid=np.concatenate([p.valid for p in parts]),
        scores={n: np.concatenate([p.scores[n] for p in parts]) for n in stages},
        kept={n: np.concatenate([p.kept[n] for p in parts]) for n in stages},
        latency_ms={n: sum(p.latency_ms[n] for p in parts) for n in stages},
    )


class Recommender:
    """A trained cascade serving the whole catalogue (see the module docstring).

    Args:
        schema: the model's dataset schema (request fields and vocabularies).
        catalogue: the items to select from.
        stages: the serving stages, retrieval first (:func:`.stages.build_stage`).
        keep: serving keep sizes, one per stage (default :func:`default_keep`).
        index: FAISS index options for a two-tower retrieval stage (default: exact), or an index already built
            over its item vectors.
        max_batch: requests scored together (1 for exported programs, which take one request at a time).
        info: facts for ``/metadata`` (method, source, ...).

    Raises:
        ValueError: bad keep sizes (:meth:`check_serving_keep`).
    """

    def __init__(
        self,
        schema: DatasetSchema,
        catalogue: Catalogue,
        stages: Sequence[ServingStage],
        *,
        keep: Sequence[int] | None = None,
        index: IndexOptions | ItemIndex | None = None,
        max_batch: int = 256,
        info: Mapping | None = None,
    ) -> None:
        self.schema = schema
        self.catalogue = catalogue
        self.stages = list(stages)
        self.keep = self.check_serving_keep(keep if keep is not None else default_keep(len(stages), catalogue.size))
        self.max_batch = max_batch
        self.info = dict(info or {})
        self._items = {n: torch.from_numpy(a) for n, a in catalogue.fields.items()}
        self._history_key = next((h.name for h in schema.history if h.item_field == catalogue.key), None)
        first = self.stages[0]
        self.index: ItemIndex | None = None
        if isinstance(index, ItemIndex):
            self.index = index
        elif first.kind == "two_tower":
            assert first.items is not None
            self.index = ItemIndex(first.items.numpy(), index or IndexOptions())

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        data: str | Path | None = None,
        catalogue: Catalogue | None = None,
        keep: Sequence[int] | None = None,
        index: IndexOptions | None = None,
    ) -> Recommender:
        """Load a finished run folder (written by ``train``), cache every stage's item side, build the index.

        Args:
            run_dir: the run folder.
            data: the dataset folder (default: the one saved in the run).
            catalogue: the items to serve (default :meth:`.Catalogue.from_dataset` of the run's dataset).
            keep, index: as the constructor.

        Raises:
            FileNotFoundError / ValueError: not a run folder, or one that does not fit its dataset.
        """
        from ..training.checkpoint import load_run

        run = load_run(Path(run_dir), data=None if data is None else Path(data))
        catalogue = catalogue or Catalogue.from_dataset(run.data, run.schema)
        items = {n: torch.from_numpy(a) for n, a in catalogue.fields.items()}
        stages = [build_stage(s.name, s.model.cpu(), items) for s in run.cascade.stages]
        info = {"source": str(run_dir), "data": str(run.data), "method": run.config.method, "models": run.config.models}
        return cls(run.schema, catalogue, stages, keep=keep, index=index, info={**info, "dataset": run.schema.name})

    # -- validation --------------------------------------------------------------------------------------------
    def check_serving_keep(self, keep: Sequence[int]) -> tuple[int, ...]:
        """Validate serving keep sizes: one per stage, strictly decreasing, ``keep[0] <= M``.

        Raises:
            ValueError: naming what is wrong.
        """
        what = f"serving keep (the catalogue holds {self.catalogue.size} items)"
        keep = check_keep(keep, num_candidates=self.catalogue.size, what=what)
        if len(keep) != len(self.stages):
            raise ValueError(f"serving keep={list(keep)}: give one size per stage ({len(self.stages)} stages)")
        return keep

    def check_k(self, k: int, keep: Sequence[int]) -> int:
        """Validate the number of items to return: ``1 <= k <= keep[-1] <= M``.

        Raises:
            ValueError: ``k`` is not a positive integer, exceeds the catalogue or the last stage's keep size.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k={k!r}: the number of items to recommend must be a positive integer")
        if k > self.catalogue.size:
            raise ValueError(f"k={k} is larger than the catalogue ({self.catalogue.size} items)")
        if k > keep[-1]:
            raise ValueError(f"k={k} exceeds what the last stage keeps ({keep[-1]}; serving keep={list(keep)})")
        return int(k)

    # -- serving ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def recommend(
        self, requests: Requests, k: int, *, keep: Sequence[int] | None = None, exclude_history: bool = True
    ) -> Recommendations:
        """The top ``k`` catalogue items for each request (see the module docstring).

        Args:
            requests: validated requests (:meth:`.Requests.from_columns`, :func:`.read_requests`).
            k: items per request, ``1 <= k <= keep[-1]``.
            keep: serving keep sizes for this call (default: the recommender's).
            exclude_history: also exclude the items of each request's behaviour history (its key field).

        Returns:
            :class:`Recommendations`; a request with fewer than ``k`` non-excluded items gets fewer.

        Raises:
            ValueError: bad ``k`` or ``keep``; NaN scores from a model.
        """
        keep = self.keep if keep is None else self.check_serving_keep(keep)
        k = self.check_k(k, keep)
        parts = [
            self._recommend(requests.select(slice(s, s + self.max_batch)), k, keep, exclude_history)
            for s in range(0, len(requests), self.max_batch)
        ]
        return _concat(parts)

    def _excluded_rows(self, requests: Requests, exclude_history: bool) -> list[np.ndarray]:
        out = []
        for b in range(len(requests)):
            keys = requests.exclude[b]
            if exclude_history and self._history_key is not None:
                keys = np.concatenate([keys, requests.history[self._history_key][b]])
            rows = self.catalogue.rows_of(keys)
            out.append(np.unique(rows[rows >= 0]))
        return out

    def _retrieve(self, requests: Requests, features: dict, count: int, excluded: list[np.ndarray]):
        """``(rows [B, count] int64 tensor, scores [B, count] float)``, best first, excluded items removed."""
        stage = self.stages[0]
        user = stage.user_side(features)
        extra = max((len(e) for e in excluded), default=0)
        if self.index is not None:
            assert user is not None
            scores, rows = self.index.search(user.float().numpy(), count + extra)
        else:  # score every catalogue item
            every = torch.arange(self.catalogue.size).expand(len(requests), -1)
            s = stage.score(features, user, every, self._items).float()
            top = torch.topk(s, min(count + extra, self.catalogue.size))
            scores, rows = top.values.numpy(), top.indices.numpy()
        drop = np.stack([np.isin(rows[b], excluded[b]) for b in range(len(requests))]) | (rows < 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :count]
        rows = np.where(np.take_along_axis(drop, order, 1), -1, np.take_along_axis(rows, order, 1))
        scores = np.where(rows >= 0, np.take_along_axis(scores, order, 1), -np.inf)
        return torch.from_numpy(rows), torch.from_numpy(scores.astype(np.float32))

    def _recommend(self, requests: Requests, k: int, keep: Sequence[int], exclude_history: bool) -> Recommendations:
        latency: dict[str, float] = {}
        kept: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        features = requests.tensors()
        excluded = self._excluded_rows(requests, exclude_history)
        rows, first = self._retrieve(requests, features, keep[0], excluded)
        scores = {self.stages[0].name: first}
        latency[self.stages[0].name] = (time.perf_counter() - start) * 1e3
        kept[self.stages[0].name] = rows.numpy()
        for stage, size in zip(self.stages[1:], keep[1:]):
            start = time.perf_counter()
            s = stage.score(features, stage.user_side(features), rows, self._items).float()
            if torch.isnan(s).any():
                raise ValueError(f"stage {stage.name!r} produced NaN scores")
            s = s.masked_fill(rows < 0, -torch.inf)
            top = torch.topk(s, min(size, s.shape[1])).indices
            rows = rows.gather(1, top)
            scores = {n: v.gather(1, top) for n, v in scores.items()}
            scores[stage.name] = s.gather(1, top)
            latency[stage.name] = (time.perf_counter() - start) * 1e3
            kept[stage.name] = rows.numpy()
        rows = rows[:, :k]
        valid = (rows >= 0).numpy()
        item = np.where(valid, self.catalogue.keys[rows.clamp_min(0).numpy()], 0)
        return Recommendations(
            request_id=requests.request_id,
            item=item,
            valid=valid,
            scores={n: v[:, :k].numpy() for n, v in scores.items()},
            kept=kept,
            latency_ms=latency,
        )

    def metadata(self) -> dict:
        """What ``/metadata`` reports: stages, keep sizes, catalogue size, request fields and vocabularies."""
        return {
            **self.info,
            "stages": [{"name": s.name, "kind": s.kind} for s in self.stages],
            "keep": list(self.keep),
            "catalogue_size": self.catalogue.size,
            "item_key": self.catalogue.key,
            "index": self.index.options.kind if self.index is not None else "none (every item is scored)",
            "fields": {
                f"{f.role}.{f.name}": {"vocab_size": f.vocab_size, "description": f.description}
                for f in self.schema.features
                if f.role != "item"
            },
            "history": {f"history.{h.name}": {"item_field": h.item_field} for h in self.schema.history},
            "history_length": self.schema.history_length,
        }

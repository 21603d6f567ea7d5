"""cascade-ranking: train multi-stage cascade ranking systems (retrieval -> pre-ranking -> ranking) as one network.

The stable public API (imported on first use, so ``import cascade_ranking`` does not load torch):

* losses: the :mod:`~cascade_ranking.losses` module (``losses.build(name, keep=..., gt_num=...)``),
  :class:`LossOutput`, :class:`CascadeLoss` (the calling convention);
* differentiable sorting: :func:`neural_sort`, :func:`soft_sort` (masked relaxed permutation matrices);
* models and the cascade: :func:`build_model`, :class:`Cascade`, :class:`Stage`;
* data: :class:`DatasetSchema`, :class:`RequestBatch`, :func:`open_dataset`, :func:`iterate_partitions`;
* metrics: :class:`CascadeMetrics` (streaming joint recall, stage recall, NDCG@k, Kendall tau);
* training: :class:`TrainConfig`; the protocol itself is :func:`cascade_ranking.training.loop.train` and
  evaluation :func:`cascade_ranking.training.evaluate.evaluate`.

Submodules (``losses``, ``metrics``, ``models``, ``sorting``, ``data``) are importable as attributes too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name (exactly the names of ``__all__``) -> "module" (a submodule) or "module:attribute".
_LAZY: dict[str, str] = {
    "data": "cascade_ranking.data",
    "losses": "cascade_ranking.losses",
    "metrics": "cascade_ranking.metrics",
    "models": "cascade_ranking.models",
    "sorting": "cascade_ranking.sorting",
    "Cascade": "cascade_ranking.cascade:Cascade",
    "CascadeLoss": "cascade_ranking.types:CascadeLoss",
    "CascadeMetrics": "cascade_ranking.metrics:CascadeMetrics",
    "DatasetSchema": "cascade_ranking.data.schema:DatasetSchema",
    "LossOutput": "cascade_ranking.types:LossOutput",
    "RequestBatch": "cascade_ranking.types:RequestBatch",
    "Stage": "cascade_ranking.cascade:Stage",
    "TrainConfig": "cascade_ranking.training.config:TrainConfig",
    "build_model": "cascade_ranking.models:build_model",
    "iterate_partitions": "cascade_ranking.data.loader:iterate_partitions",
    "neural_sort": "cascade_ranking.sorting:neural_sort",
    "open_dataset": "cascade_ranking.data.store:open_dataset",
    "soft_sort": "cascade_ranking.sorting:soft_sort",
}

__all__ = [
    "Cascade",
    "CascadeLoss",
    "CascadeMetrics",
    "DatasetSchema",
    "LossOutput",
    "RequestBatch",
    "Stage",
    "TrainConfig",
    "build_model",
    "data",
    "iterate_partitions",
    "losses",
    "metrics",
    "models",
    "neural_sort",
    "open_dataset",
    "soft_sort",
    "sorting",
]

if TYPE_CHECKING:  # static checkers and IDEs see the real objects
    from . import data, losses, metrics, models, sorting
    from .cascade import Cascade, Stage
    from .data.loader import iterate_partitions
    from .data.schema import DatasetSchema
    from .data.store import open_dataset
    from .metrics import CascadeMetrics
    from .models import build_model
    from .sorting import neural_sort, soft_sort
    from .training.config import TrainConfig
    from .types import CascadeLoss, LossOutput, RequestBatch


def __getattr__(name: str) -> Any:
    """Import a public name of :data:`__all__` on first access (PEP 562)."""
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'cascade_ranking' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

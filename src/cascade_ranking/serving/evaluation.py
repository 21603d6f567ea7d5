r"""Full-catalogue evaluation: every test request selects from *all* catalogue items instead of its logged
candidates, and the answer is scored against the request's held-out impressions.

Definitions, for a request with held-out impressions ``P`` (its valid candidates in the top funnel position —
MovieLens-100K: the items the user rated in the request; RecFlow: the items shown), graded gains
``g(i) = max(label(i), 0)`` for ``i`` in ``P`` (the dataset's label; 0 for any item outside ``P``), and the
recommended list ``R_k`` (the last stage's top ``k``, best first, history items excluded):

.. math::

    \mathrm{Recall@}k = \frac{|R_k \cap P|}{|P|}, \qquad
    \mathrm{NDCG@}k = \frac{\sum_{r=1}^{k} g(R_k[r]) / \log_2(r + 1)}
                          {\sum_{r=1}^{\min(k, |P|)} g^\downarrow_r / \log_2(r + 1)}

with ``g↓`` the gains of ``P`` sorted in decreasing order (linear gains, as scikit-learn's ``ndcg_score``).
``catalogue_recall/<stage>`` is ``|K_i ∩ P| / |P|`` for the set ``K_i`` stage ``i`` kept (``keep[i]`` items):
how many impressions survive each stage of the funnel. Means are over requests with at least one impression
(requests without one are counted in ``catalogue_skipped``). Latency: milliseconds per request of every stage
(mean), and the 99th percentile of a request's total, requests answered one at a time by default.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..data.atomic import write_text_atomic
from ..data.schema import DatasetSchema, Partition
from ..data.store import read_partition
from .index import IndexOptions
from .recommender import Recommendations, Recommender
from .requests import Requests

__all__ = [
    "CATALOGUE_FILE",
    "benchmark_columns",
    "catalogue_metrics",
    "evaluate_run_on_catalogue",
    "ndcg_at_k",
    "recall_at_k",
]

log = logging.getLogger(__name__)


def recall_at_k(recommended: np.ndarray, positives: np.ndarray) -> float:
    """``|recommended ∩ positives| / |positives|`` (key ids, ``[k]`` and ``[P]``; ``P > 0``)."""
    return float(np.isin(positives, recommended).sum()) / len(positives)


def ndcg_at_k(recommended: np.ndarray, positives: np.ndarray, gains: np.ndarray) -> float:
    """NDCG of the ranked ``recommended`` ``[k]`` key ids against ``positives`` ``[P]`` with ``gains`` ``[P]``
    (linear gains, log2 discount; see the module docstring). 0 when every gain is 0."""
    k = len(recommended)
    gain_of = dict(zip(positives.tolist(), gains.tolist()))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(sum(gain_of.get(int(i), 0.0) * d for i, d in zip(recommended, discount)))
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * discount[: len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else 0.0


def _impressions(arrays: dict[str, np.ndarray], schema: DatasetSchema, key: str) -> list[tuple[np.ndarray, np.ndarray]]:
    top = len(schema.funnel_positions) - 1
    held = arrays["mask"] & (arrays["stage"] == top)
    keys, labels = arrays[f"item.{key}"], arrays["label"]
    return [(keys[b][held[b]], np.maximum(labels[b][held[b]], 0.0)) for b in range(len(keys))]


def _score(out: Recommendations, truth, rec: Recommender, sums: dict[str, list[float]], k: int) -> None:
    names = list(out.kept)
    for b, (pos, gains) in enumerate(truth):
        if not len(pos):
            sums.setdefault("skipped", []).append(1.0)
            continue
        items = out.item[b][out.valid[b]]
        sums.setdefault(f"catalogue_recall@{k}", []).append(recall_at_k(items, pos))
        sums.setdefault(f"catalogue_ndcg@{k}", []).append(ndcg_at_k(items, pos, gains))
        for name in names:
            rows = out.kept[name][b]
            sums.setdefault(f"catalogue_recall/{name}", []).append(
                recall_at_k(rec.catalogue.keys[rows[rows >= 0]], pos)
            )


def catalogue_metrics(
    recommender: Recommender,
    directory: str | Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    *,
    k: int = 10,
    keep: Sequence[int] | None = None,
    batch_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Full-catalogue Recall@k, NDCG@k, per-stage recall and latency over every request of ``partitions``.

    Args:
        recommender: the cascade to evaluate (its catalogue is the candidate set).
        directory, schema, partitions: the requests and their held-out impressions.
        k: the cut-off (``1 <= k <= keep[-1]``).
        keep: serving keep sizes (default: the recommender's).
        batch_size: requests answered together (1: latency per request as served).
        on_batch: called with the number of requests of each finished batch.

    Returns:
        ``catalogue_recall@k``, ``catalogue_ndcg@k``, ``catalogue_recall/<stage>``, ``latency_ms/<stage>`` (mean
        per request), ``latency_ms/p99`` (a request's total), ``catalogue_requests``, ``catalogue_skipped``.
    """
    sums: dict[str, list[float]] = {}
    totals: list[float] = []
    per_stage: dict[str, float] = {}
    count = 0
    for partition in partitions:
        arrays = read_partition(directory, schema, partition)
        requests = Requests.from_columns(schema, arrays, where=str(Path(directory) / partition.file_name))
        truth = _impressions(arrays, schema, recommender.catalogue.key)
        for s in range(0, len(requests), batch_size):
            part = requests.select(slice(s, s + batch_size))
            out = recommender.recommend(part, k, keep=keep)
            _score(out, truth[s : s + batch_size], recommender, sums, k)
            for name, ms in out.latency_ms.items():
                per_stage[name] = per_stage.get(name, 0.0) + ms
            totals.append(sum(out.latency_ms.values()) / len(part))
            count += len(part)
            if on_batch is not None:
                on_batch(len(part))
    skipped = len(sums.pop("skipped", []))
    result = {name: float(np.mean(v)) for name, v in sums.items()}
    result.update({f"latency_ms/{n}": t / max(count, 1) for n, t in per_stage.items()})
    result["latency_ms/p99"] = float(np.percentile(totals, 99)) if totals else math.nan
    result["catalogue_requests"] = float(count - skipped)
    result["catalogue_skipped"] = float(skipped)
    return result


def evaluate_run_on_catalogue(
    run_dir: str | Path,
    *,
    role: str = "test",
    k: int = 10,
    keep: Sequence[int] | None = None,
    index: IndexOptions | None = None,
    data: str | Path | None = None,
    batch_size: int = 1,
) -> dict[str, float]:
    """:func:`catalogue_metrics` of a run folder on its dataset's ``role`` partitions (the benchmark's columns).

    Raises:
        ValueError: the dataset has no partition with ``role``; as :meth:`.Recommender.from_run`.
    """
    rec = Recommender.from_run(run_dir, data=data, keep=keep, index=index)
    data_dir = Path(data) if data is not None else Path(rec.info["data"])
    parts = rec.schema.partitions_with_role(role)  # type: ignore[arg-type]
    if not parts:
        raise ValueError(f"{data_dir}: no partition with role {role!r}")
    values = catalogue_metrics(rec, data_dir, rec.schema, parts, k=k, batch_size=batch_size)
    return {"catalogue_k": float(k), **values}


#: The file in a run folder caching its full-catalogue columns (:func:`benchmark_columns`).
CATALOGUE_FILE = "catalogue_metrics.json"


def benchmark_columns(
    run_dir: str | Path, *, k: int = 10, keep: Sequence[int] | None = None, batch_size: int = 32
) -> dict[str, float]:
    """The full-catalogue columns of a finished run for a benchmark table (test partitions, exact index).

    Computed once and cached in ``run_dir/catalogue_metrics.json`` (recomputed when the settings change), so
    that a resumed benchmark does not evaluate again. Columns: as :func:`catalogue_metrics`; requests are
    answered ``batch_size`` at a time (the metrics do not depend on it; ``latency_ms/<stage>`` is then the
    batch's time per request, and ``latency_ms/p99`` a batch's).
    """
    path = Path(run_dir) / CATALOGUE_FILE
    settings = {"k": k, "keep": None if keep is None else list(keep), "batch_size": batch_size}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings") == settings:
            return cached["metrics"]
    metrics = evaluate_run_on_catalogue(run_dir, k=k, keep=keep, batch_size=batch_size)
    write_text_atomic(path, json.dumps({"settings": settings, "metrics": metrics}, indent=2) + "\n")
    return metrics

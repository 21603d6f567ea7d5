"""The one experiment runner: every (row, seed) as an ordinary ``train`` run folder, run or reused, evaluated,
then the untrained reference rows, then the result files, the chart and the HTML report.

Both benchmarks are a list of :class:`BenchmarkRow` and an evaluation function: the cascade benchmark
(:mod:`.cascade`: one row per method, metrics = the run's own test metrics) and the pre-ranking benchmark
(:mod:`.prerank`: one row per model/loss/sample variant, metrics = Recall@K and NDCG@K of the single stage).

A finished run is reused when its record exists (``metrics.json``, or the task's own record file beside it),
so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.atomic import write_text_atomic
from ..data.schema import DatasetSchema
from ..training.config import TrainConfig
from ..training.evaluate import PopularityScorer, RandomScorer
from ..training.loop import train
from ..training.runfiles import METRICS_FILE
from .report import ReportInputError, write_report
from .results import REFERENCE_ROWS, run_slug, summarize, write_results

__all__ = ["BenchmarkRow", "RunEvaluator", "finish", "reference_scorers", "run_or_reuse", "run_rows"]

log = logging.getLogger(__name__)

#: ``(config, run_dir, train_metrics) -> the row's test metrics``; ``train_metrics`` is ``metrics.json``.
RunEvaluator = Callable[[TrainConfig, Path, dict], dict]


@dataclass(frozen=True)
class BenchmarkRow:
    """One row of a benchmark table: a training configuration run once per seed.

    Attributes:
        key: the row's name in the results (its run folders are ``runs/<slug(key)>-seed<s>``).
        updates: :class:`~cascade_ranking.training.config.TrainConfig` fields set for this row (method, models,
            keep, loss, ...), on top of the benchmark's base configuration.
        data: the dataset the row trains on (an ablation may train on a variant of the benchmark's dataset).
        table: the table the row belongs to (``None``: the benchmark has one table).
    """

    key: str
    updates: dict = field(default_factory=dict)
    data: Path | None = None
    table: str | None = None


def run_or_reuse(
    config: TrainConfig, data: Path, run_dir: Path, *, evaluate: RunEvaluator | None = None, record: str | None = None
) -> dict:
    """Train ``config`` on ``data`` into ``run_dir``, or reuse the finished run there.

    Args:
        evaluate: turns the trained run into the record to keep (``None``: ``metrics.json`` itself).
        record: file name of that record beside ``metrics.json`` (required with ``evaluate``); a run whose
            ``metrics.json`` and record both exist is reused.

    Returns:
        ``metrics.json``'s contents, or the record.
    """
    done = [run_dir / METRICS_FILE] + ([run_dir / record] if record else [])
    if all(p.is_file() for p in done):
        log.info("reusing finished run %s", run_dir)
        return json.loads(done[-1].read_text())
    metrics = train(config, data=data, run_dir=run_dir).metrics
    if evaluate is None or record is None:
        return metrics
    out = evaluate(config, run_dir, metrics)
    write_text_atomic(run_dir / record, json.dumps(out, indent=2) + "\n")
    return out


def run_rows(
    rows: Sequence[BenchmarkRow],
    *,
    base: TrainConfig,
    data: Path,
    out_dir: Path,
    repeats: int,
    evaluate: RunEvaluator | None = None,
    record: str | None = None,
    on_run: Callable[[str, int, dict], None] | None = None,
) -> Iterator[tuple[BenchmarkRow, int, dict]]:
    """Run (or reuse) every row ``repeats`` times, seeds 0..R-1; yield ``(row, seed, record)`` as each finishes.

    Each run's TensorBoard directory is ``<base.tensorboard>/<slug>-seed<s>`` when ``base.tensorboard`` is set.

    Raises:
        ValueError: ``repeats`` not a positive integer, or a row's configuration is invalid (unknown method).
    """
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    for row in rows:
        row_data = row.data or data
        for seed in range(repeats):
            name = f"{run_slug(row.key)}-seed{seed}"
            update = {**row.updates, "seed": seed, "data": row_data}
            if base.tensorboard is not None:
                update["tensorboard"] = Path(base.tensorboard) / name
            config = base.model_copy(update=update)
            TrainConfig.model_validate(config.model_dump())  # re-validates the method name
            result = run_or_reuse(config, row_data, out_dir / "runs" / name, evaluate=evaluate, record=record)
            if on_run is not None:
                on_run(row.key, seed, result)
            yield row, seed, result


def reference_scorers(
    data: Path, schema: DatasetSchema, num_stages: int, repeats: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, int, torch.nn.Module]]:
    """The untrained reference rows, ``(name, seed, scorer)`` for every seed: random scores (seeded) and item
    popularity (top-funnel appearances on the training partitions; the same for every seed)."""
    pop = PopularityScorer.fit(data, schema, num_stages).to(device)
    for seed in range(repeats):
        for name, scorer in zip(REFERENCE_ROWS, (RandomScorer(num_stages, seed), pop)):
            yield name, seed, scorer


def finish(out_dir: Path, results: dict, *, title: str, markdown: Callable[[dict], str] | None = None) -> dict:
    """Summarise ``results["runs"]``, write the result files and ``report.html``; return the results.

    Args:
        results: ``runs`` (one dict per run: ``row``, ``seed``, metrics) and the benchmark's description;
            ``primary_metric`` names the charted metric.
        title: the table's and chart's title.
        markdown: ``results -> results.md`` contents (default: the title and one table).
    """
    results["summary"] = summarize(results["runs"])
    write_results(out_dir, results, title=title, markdown=markdown(results) if markdown else None)
    try:
        write_report([out_dir], out_dir / "report.html", title=title)
    except ReportInputError as exc:
        log.warning("report.html not written: %s", exc)
    return results

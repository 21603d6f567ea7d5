"""The one experiment runner: every (row, seed) as an ordinary ``train`` run folder, run or reused, evaluated,
then the untrained reference rows, then the result files, the chart and the HTML report.

Both benchmarks are a list of :class:`BenchmarkRow` and an evaluation function: the cascade benchmark
(:mod:`.cascade`: one row per method, metrics = the run's own test metrics) and the pre-ranking benchmark
(:mod:`.prerank`: one row per model/loss/sample variant, metrics = Recall@K and NDCG@K of the single stage).

A finished run is reused only when its record exists (``metrics.json``, and the task's own record file beside
it) *and* its run fingerprint (:mod:`cascade_ranking.training.fingerprint`: resolved configuration, dataset
identity and contents, package version) equals the fingerprint of the run asked for; so an interrupted benchmark
resumes where it stopped, and a benchmark re-run with other options or another dataset never reports an old
run as a new one. A run folder whose fingerprint differs is trained again in place (a warning says what
changed): the benchmark's ``runs/`` folder belongs to the benchmark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.atomic import write_json_atomic
from ..data.schema import DatasetSchema
from ..data.store import open_dataset
from ..training.build import resolve_config
from ..training.config import TrainConfig
from ..training.evaluate import PopularityScorer, RandomScorer
from ..training.fingerprint import FINGERPRINT_KEY, fingerprint_differences, run_fingerprint
from ..training.loop import train
from ..training.runfiles import METRICS_FILE
from .report import ReportInputError, write_report
from .results import REFERENCE_ROWS, run_name, summarize, write_results

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
        folder: the run folders' name (``runs/<slug(folder)>-seed<s>``) when it is not ``key``: a tuned row names
            the folder of its chosen grid point, whose seed-0 run it reuses.
    """

    key: str
    updates: dict = field(default_factory=dict)
    data: Path | None = None
    table: str | None = None
    folder: str | None = None


def run_or_reuse(
    config: TrainConfig,
    data: Path,
    run_dir: Path,
    *,
    evaluate: RunEvaluator | None = None,
    record: str | None = None,
    validation: Callable[[torch.nn.Module], float] | None = None,
) -> dict:
    """Train ``config`` on ``data`` into ``run_dir``, or reuse the finished run there.

    Args:
        evaluate: turns the trained run into the record to keep (``None``: ``metrics.json`` itself).
        record: file name of that record beside ``metrics.json`` (required with ``evaluate``); a run whose
            ``metrics.json`` and record both exist is reused.
        validation: early stopping's validation metric (``train``'s ``validation``).

    Returns:
        ``metrics.json``'s contents, or the record.

    Raises:
        RunFolderError: ``run_dir`` is in use by another process.
    """
    wanted = run_fingerprint(resolve_config(config, open_dataset(data), data), data)
    changed = _reuse_blockers(run_dir, record, wanted)
    if not changed:
        log.info("reusing finished run %s (same fingerprint)", run_dir)
        return json.loads((run_dir / (record or METRICS_FILE)).read_text())
    if (run_dir / METRICS_FILE).is_file():
        log.warning("%s: not reused, %s changed; training it again", run_dir, ", ".join(changed))
    if record:
        (run_dir / record).unlink(missing_ok=True)  # the old record never sits beside a new run's metrics
    metrics = train(config, data=data, run_dir=run_dir, overwrite=True, validation=validation).metrics
    if evaluate is None or record is None:
        return metrics
    out = evaluate(config, run_dir, metrics)
    write_json_atomic(run_dir / record, {**out, FINGERPRINT_KEY: metrics[FINGERPRINT_KEY]})
    return out


def _reuse_blockers(run_dir: Path, record: str | None, wanted: dict) -> list[str]:
    """Why the run in ``run_dir`` cannot be reused for fingerprint ``wanted`` (empty: it can)."""
    files = [run_dir / METRICS_FILE] + ([run_dir / record] if record else [])
    if not all(p.is_file() for p in files):
        return ["no finished run"]
    for path in files:
        try:
            saved = json.loads(path.read_text()).get(FINGERPRINT_KEY)
        except (ValueError, AttributeError, OSError):
            return [f"unreadable {path.name}"]
        changed = fingerprint_differences(saved, wanted)
        if changed:
            return changed
    return []


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
    validation: Callable[[torch.nn.Module], float] | None = None,
) -> Iterator[tuple[BenchmarkRow, int, dict]]:
    """Run (or reuse) every row ``repeats`` times, seeds 0..R-1; yield ``(row, seed, record)`` as each finishes.

    ``validation`` is early stopping's metric for every run (``train``'s ``validation``). Each run's TensorBoard
    directory is ``<base.tensorboard>/<slug>-seed<s>`` when ``base.tensorboard`` is set.

    Raises:
        ValueError: ``repeats`` not a positive integer, or a row's configuration is invalid (unknown method).
    """
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    for row in rows:
        row_data = row.data or data
        for seed in range(repeats):
            name = run_name(row.folder or row.key, seed)
            update = {**row.updates, "seed": seed, "data": row_data}
            if base.tensorboard is not None:
                update["tensorboard"] = Path(base.tensorboard) / name
            config = base.model_copy(update=update)
            TrainConfig.model_validate(config.model_dump())  # re-validates the method name
            result = run_or_reuse(config, row_data, out_dir / "runs" / name, evaluate=evaluate, record=record,
                                  validation=validation)  # fmt: skip
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

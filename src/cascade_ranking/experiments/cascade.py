"""The cascade benchmark (``benchmark``, ``--task cascade``): the LCRON paper's comparison of cascade methods
(Wang et al., ICML 2025, Tables 2-3) — every method x seed on one cascade, joint recall and per-stage metrics on
the test partitions, plus the random and popularity reference rows.

Each (method, seed) run is an ordinary ``train`` run folder ``OUT/runs/<method>-seed<s>/`` (reused when
finished, :mod:`.runner`); its test metrics are those ``train`` recorded. With ``base.tensorboard`` set, each
run logs to TensorBoard in ``<tensorboard>/<method>-seed<seed>``. With ``run_columns`` (the command line's
``--catalogue full`` passes :func:`cascade_ranking.serving.evaluation.benchmark_columns`), each run's row gets
the columns it returns for the run folder, e.g. full-catalogue Recall@10 beside the logged joint recall.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.store import open_dataset
from ..training.config import TrainConfig
from ..training.evaluate import evaluate
from ..types import stage_names
from .results import run_name
from .runner import BenchmarkRow, finish, reference_scorers, run_rows

__all__ = ["run_benchmark"]


def run_benchmark(
    *,
    methods: Sequence[str],
    data: Path,
    out_dir: Path,
    repeats: int = 3,
    base: TrainConfig | None = None,
    on_run: Callable[[str, int, dict], None] | None = None,
    run_columns: Callable[[Path], dict[str, float]] | None = None,
) -> dict:
    """Train and evaluate every method ``repeats`` times (seeds 0..R-1); write and return the results.

    Args:
        methods: registered method names.
        data: dataset directory.
        out_dir: output folder (``runs/``, ``results.json``, ``results.csv``, ``results.md``, ``joint_recall.png``,
            ``report.html``).
        repeats: seeds per method.
        base: configuration shared by every run (its ``method`` and ``seed`` are replaced; its ``tensorboard``
            directory, when set, gets one sub-directory per run).
        on_run: called after each run with ``(method, seed, metrics)`` (``metrics`` as in ``metrics.json``).
        run_columns: extra columns of a finished run, from its folder (see the module docstring).

    Returns:
        ``{"runs": [...], "summary": {row: {metric: {"mean", "std", "values"}}}, ...}``.

    Raises:
        ValueError: ``repeats`` not a positive integer, an unknown method, or a configuration that does not fit
            the dataset.
    """
    base = base or TrainConfig()
    schema = open_dataset(data)
    keep = base.keep or schema.keep
    gt_num = base.gt_num or schema.gt_num
    k = len(keep)
    rows = [BenchmarkRow(method, {"method": method}) for method in methods]
    runs = []
    for row, seed, metrics in run_rows(rows, base=base, data=data, out_dir=out_dir, repeats=repeats, on_run=on_run):
        extra = run_columns(out_dir / "runs" / run_name(row.key, seed)) if run_columns else {}
        runs.append(
            {"row": row.key, "seed": seed, **metrics["test"], "train_seconds": metrics["train_seconds"], **extra}
        )
    test = schema.partitions_with_role("test")
    for name, seed, scorer in reference_scorers(data, schema, k, repeats):
        values = evaluate(scorer, data, schema, test, stage_names=stage_names(k), keep=keep, gt_num=gt_num, seed=seed)
        runs.append({"row": name, "seed": seed, **values})
    results = {
        "dataset": schema.name,
        "data": str(data),
        "stages": stage_names(k),
        "keep": list(keep),
        "gt_num": gt_num,
        "repeats": repeats,
        "runs": runs,
    }
    title = f"{schema.name}: {k}-stage cascade, keep {list(keep)}, {repeats} seeds"
    return finish(out_dir, results, title=title)

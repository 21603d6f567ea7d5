"""Many methods x seeds on one cascade -> a table (Markdown / CSV / JSON), a bar chart of joint recall and an
HTML report comparing the runs (:mod:`cascade_ranking.experiments.report`).

Each (method, seed) run is an ordinary ``train`` run folder under ``OUT/runs/``; a run whose
``metrics.json`` exists is reused, so an interrupted benchmark resumes where it stopped. Two reference rows
are scored without training: random scores and item popularity (counted on the training partitions). With
``base.tensorboard`` set, each run logs to TensorBoard in ``<tensorboard>/<method>-seed<seed>``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.atomic import write_text_atomic
from ..data.store import open_dataset
from ..training.config import TrainConfig
from ..training.evaluate import PopularityScorer, RandomScorer, evaluate
from ..training.loop import train
from ..training.runfiles import METRICS_FILE
from ..types import stage_names

__all__ = [
    "REFERENCE_ROWS",
    "markdown_table",
    "metric_columns",
    "plot_joint_recall",
    "run_benchmark",
    "run_log_dir",
    "summarize",
    "write_results",
]

log = logging.getLogger(__name__)

REFERENCE_ROWS = ("random", "popularity")


def _run_one(config: TrainConfig, data: Path, run_dir: Path) -> dict:
    done = run_dir / METRICS_FILE
    if done.is_file():
        log.info("reusing finished run %s", run_dir)
        return json.loads(done.read_text())
    return train(config, data=data, run_dir=run_dir).metrics


def run_benchmark(
    *,
    methods: Sequence[str],
    data: Path,
    out_dir: Path,
    repeats: int = 3,
    base: TrainConfig | None = None,
    on_run: Callable[[str, int, dict], None] | None = None,
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
        on_run: called after each run with ``(method, seed, metrics)``.

    Returns:
        ``{"runs": [...], "summary": {row: {metric: {"mean", "std", "values"}}}, ...}``.
    """
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    base = base or TrainConfig()
    schema = open_dataset(data)
    k = len(base.keep or schema.keep)
    runs = []
    for method in methods:
        for seed in range(repeats):
            update: dict = {"method": method, "seed": seed}
            if base.tensorboard is not None:
                update["tensorboard"] = run_log_dir(base.tensorboard, f"{method}-seed{seed}")
            config = base.model_copy(update=update)
            TrainConfig.model_validate(config.model_dump())  # re-validates the method name
            metrics = _run_one(config, data, out_dir / "runs" / f"{method}-seed{seed}")
            row = {"row": method, "seed": seed, **metrics["test"], "train_seconds": metrics["train_seconds"]}
            runs.append(row)
            if on_run is not None:
                on_run(method, seed, metrics)
    keep = base.keep or schema.keep
    gt_num = base.gt_num or schema.gt_num
    test = schema.partitions_with_role("test")
    pop = PopularityScorer.fit(data, schema, k)
    for seed in range(repeats):
        for name, scorer in (("random", RandomScorer(k, seed)), ("popularity", pop)):
            values = evaluate(
                scorer, data, schema, test, stage_names=stage_names(k), keep=keep, gt_num=gt_num, seed=seed
            )
            runs.append({"row": name, "seed": seed, **values})
    summary = summarize(runs)
    results = {
        "dataset": schema.name,
        "data": str(data),
        "stages": stage_names(k),
        "keep": list(keep),
        "gt_num": gt_num,
        "repeats": repeats,
        "runs": runs,
        "summary": summary,
    }
    write_results(out_dir, results)
    return results


def run_log_dir(root: Path, run_name: str) -> Path:
    """A benchmark run's TensorBoard directory: ``root/run_name`` (``tensorboard --logdir root`` compares them)."""
    return Path(root) / run_name


def summarize(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """Per row: mean, std (sample, 0 for one value) and values of every numeric metric."""
    rows: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        cell = rows.setdefault(run["row"], {})
        for key, value in run.items():
            if key in ("row", "seed", "requests") or not isinstance(value, (int, float)):
                continue
            cell.setdefault(key, []).append(float(value))
    return {
        row: {
            key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
            for key, v in metrics.items()
        }
        for row, metrics in rows.items()
    }


def metric_columns(summary: dict) -> list[str]:
    """Every metric of the summary's rows, in first-seen order: ``joint_recall`` first, ``train_seconds`` last."""
    keys: list[str] = []
    for metrics in summary.values():
        keys += [k for k in metrics if k not in keys]
    first = [k for k in ("joint_recall",) if k in keys]
    last = [k for k in ("train_seconds",) if k in keys]
    return first + [k for k in keys if k not in first + last] + last


def markdown_table(summary: dict) -> str:
    """The summary as a Markdown table: one row per method, ``mean ± std`` per metric."""
    cols = metric_columns(summary)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, metrics in summary.items():
        cells = []
        for c in cols:
            m = metrics.get(c)
            if m is None:
                cells.append("")
            elif c == "train_seconds":
                cells.append(f"{m['mean']:.1f} ± {m['std']:.1f}")
            else:
                cells.append(f"{m['mean']:.4f} ± {m['std']:.4f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict) -> None:
    """Write results.json, results.csv, results.md, joint_recall.png and report.html atomically.

    ``report.html`` (:func:`cascade_ranking.experiments.report.write_report`) also reads the run folders under
    ``out_dir/runs`` for loss curves and configurations; a run folder it cannot read is logged as a warning and
    leaves the other files in place.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = results["summary"]
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    cols = metric_columns(summary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    for row, metrics in summary.items():
        writer.writerow([row] + [f"{metrics[c][s]:.6f}" if c in metrics else "" for c in cols for s in ("mean", "std")])
    write_text_atomic(out_dir / "results.csv", buf.getvalue())
    stages, keep, seeds = len(results["stages"]), results["keep"], results["repeats"]
    title = f"{results['dataset']}: {stages}-stage cascade, keep {keep}, {seeds} seeds"
    write_text_atomic(out_dir / "results.md", f"# {title}\n\n" + markdown_table(summary))
    plot_joint_recall(out_dir / "joint_recall.png", summary, title)
    from .report import ReportInputError, write_report

    try:
        write_report([out_dir], out_dir / "report.html", title=title)
    except ReportInputError as exc:
        log.warning("report.html not written: %s", exc)


def plot_joint_recall(path: Path, summary: dict, title: str) -> None:
    """A bar chart of joint recall (mean ± std; reference rows in grey) written atomically as PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.atomic import atomic_path

    rows = list(summary)
    means = [summary[r]["joint_recall"]["mean"] for r in rows]
    stds = [summary[r]["joint_recall"]["std"] for r in rows]
    colors = ["#bbbbbb" if r in REFERENCE_ROWS else "#3b75af" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(rows, means, yerr=stds, capsize=4, color=colors)
    ax.set_ylabel("joint recall (test, mean ± std)")
    ax.set_title(title, fontsize=9)
    lo = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(m + s for m, s in zip(means, stds)) + 0.03))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

"""Benchmark results: per-row summaries (mean ± std over seeds), the Markdown table, the result files
(``results.json``, ``results.csv``, ``results.md``) and the bar chart of the primary metric."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from ..data.atomic import atomic_path, strict_json, write_text_atomic

__all__ = [
    "REFERENCE_ROWS",
    "chart_file",
    "markdown_table",
    "metric_columns",
    "plot_primary",
    "primary_metric",
    "run_name",
    "run_slug",
    "summarize",
    "write_results",
]

#: The untrained reference rows every benchmark ends its (first) table with.
REFERENCE_ROWS = ("random", "popularity")
#: A benchmark's charted metric unless its results name another (``results["primary_metric"]``).
DEFAULT_PRIMARY = "joint_recall"


def run_slug(key: str) -> str:
    """A row's name as a file-name part (run folders ``runs/<slug>-seed<s>``): non-alphanumerics become ``_``."""
    return "".join(ch if ch.isalnum() else "_" for ch in key).strip("_")


def run_name(key: str, seed: object) -> str:
    """A benchmark run's folder name under ``OUT/runs/`` (and its TensorBoard sub-directory): ``<slug>-seed<s>``."""
    return f"{run_slug(key)}-seed{seed}"


def primary_metric(results: dict) -> str:
    """The metric a benchmark's results are charted and ordered by (``joint_recall`` for the cascade task)."""
    return str(results.get("primary_metric", DEFAULT_PRIMARY))


def chart_file(results: dict) -> str:
    """The chart's file name: ``<primary metric>.png`` with ``@`` as ``_at_`` (``joint_recall.png``)."""
    return primary_metric(results).replace("@", "_at_").replace("/", "_") + ".png"


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


def metric_columns(summary: dict, primary: str = DEFAULT_PRIMARY) -> list[str]:
    """Every metric of the summary's rows, in first-seen order: ``primary`` first, ``train_seconds`` last."""
    keys: list[str] = []
    for metrics in summary.values():
        keys += [k for k in metrics if k not in keys]
    first = [k for k in (primary,) if k in keys]
    last = [k for k in ("train_seconds",) if k in keys]
    return first + [k for k in keys if k not in first + last] + last


def markdown_table(summary: dict, primary: str = DEFAULT_PRIMARY) -> str:
    """The summary as a Markdown table: one row per method, ``mean ± std`` per metric."""
    cols = metric_columns(summary, primary)
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


def write_results(out_dir: Path, results: dict, *, title: str, markdown: str | None = None) -> None:
    """Write ``results.json``, ``results.csv``, ``results.md`` and the chart (:func:`chart_file`) atomically.

    Args:
        results: ``summary`` (:func:`summarize`) and the benchmark's description, written as they are.
        title: the Markdown table's and the chart's title.
        markdown: ``results.md`` contents (default: the title and :func:`markdown_table`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, primary = results["summary"], primary_metric(results)
    write_text_atomic(out_dir / "results.json", strict_json(results, what=str(out_dir / "results.json")))
    cols = metric_columns(summary, primary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    for row, metrics in summary.items():
        writer.writerow([row] + [f"{metrics[c][s]:.6f}" if c in metrics else "" for c in cols for s in ("mean", "std")])
    write_text_atomic(out_dir / "results.csv", buf.getvalue())
    write_text_atomic(out_dir / "results.md", markdown or f"# {title}\n\n" + markdown_table(summary, primary))
    plot_primary(out_dir / chart_file(results), summary, title, primary)


def _finite(cell: dict) -> bool:
    return all(isinstance(cell.get(k), (int, float)) and math.isfinite(cell[k]) for k in ("mean", "std"))


def plot_primary(path: Path, summary: dict, title: str, metric: str = DEFAULT_PRIMARY) -> None:
    """A bar chart of ``metric`` (mean ± std; reference rows in grey) written atomically as PNG to ``path``.

    Rows without ``metric``, or whose mean or std is not finite (a run that produced NaN), are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if metric in summary[r] and _finite(summary[r][metric])]
    means = [summary[r][metric]["mean"] for r in rows]
    stds = [summary[r][metric]["std"] for r in rows]
    colors = ["#bbbbbb" if r in REFERENCE_ROWS else "#3b75af" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(rows, means, yerr=stds, capsize=4, color=colors)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (test, mean ± std)")
    ax.set_title(title, fontsize=9)
    if rows:
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(m + s for m, s in zip(means, stds)) + 0.03))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

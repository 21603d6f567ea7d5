"""A report comparing runs: one self-contained HTML file (or one PNG figure) from run folders and benchmarks.

Inputs (any mix):

* a **run folder** written by ``train`` (``metrics.json`` + ``config.json``): one row, its test metrics;
* **benchmark results** written by ``benchmark`` (a folder holding ``results.json``, or that file): one row per
  method (or pre-ranking row) with mean ± std over its seeds; the loss curves and configurations come from the
  benchmark's run folders (``runs/<row>-seed<s>/``) when they are there.

The HTML report holds a table of every test metric (``mean ± std`` when a row has several seeds; each cell
carries ``data-mean``/``data-std``/``data-n`` attributes with the exact values), a bar chart of joint recall with
±1 std error bars, the training-loss curves (``loss_curve_every_10_steps`` of ``metrics.json``: the loss of
optimizer steps 1, 11, 21, ...; the mean over seeds for a benchmark row), the provenance of every input
(dataset, seeds, package versions, device) and the configuration keys whose values differ between runs. Charts
are PNG images embedded as base64, so the file is self-contained. ``.png`` output is one figure with the two
charts. Files are written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic
from ..training.runfiles import CONFIG_FILE, LOSS_CURVE_EVERY, LOSS_CURVE_KEY, METRICS_FILE
from .results import DEFAULT_PRIMARY, REFERENCE_ROWS, metric_columns, primary_metric, run_name, summarize

__all__ = [
    "ReportData",
    "ReportInputError",
    "ReportRow",
    "ReportSource",
    "config_differences",
    "load_benchmark",
    "load_inputs",
    "load_run_folder",
    "metrics_table_html",
    "render_html",
    "render_png",
    "write_report",
]

log = logging.getLogger(__name__)

RUN_FILES = (METRICS_FILE, CONFIG_FILE)
RESULTS_FILE = "results.json"
#: Configuration keys left out of the differences: where a run logs, not what it computes.
IGNORED_CONFIG_KEYS = ("tensorboard",)
_MISSING = "—"  # a configuration key a run does not have


class ReportInputError(ValueError):
    """An input is neither a run folder nor benchmark results, or one of its files is unreadable."""


@dataclass
class ReportRow:
    """One row of the report: a run, or one method of a benchmark.

    Attributes:
        name: the row's label in tables and charts (unique in a report).
        metrics: ``{metric: {"mean", "std", "values"}}`` over the row's seeds (test partitions).
        curves: ``loss_curve_every_10_steps`` of each of the row's runs that has one.
        configs: the saved ``config.json`` of each of the row's runs (one per seed); empty for untrained
            reference rows and rows whose run folders are missing.
        source: label of the input the row comes from.
    """

    name: str
    metrics: dict[str, dict[str, Any]]
    curves: list[list[float]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def reference(self) -> bool:
        return not self.configs and self.name.rsplit(": ", 1)[-1] in REFERENCE_ROWS


@dataclass
class ReportSource:
    """One input: its label, path, kind (``"run"`` or ``"benchmark"``) and provenance (``{field: text}``)."""

    label: str
    path: Path
    kind: str
    provenance: dict[str, str]
    primary: str = DEFAULT_PRIMARY


@dataclass
class ReportData:
    """Everything a report shows: its inputs (in the order given) and its rows (in input order)."""

    sources: list[ReportSource]
    rows: list[ReportRow]

    @property
    def primary(self) -> str:
        """The charted metric: the first input's primary metric (``joint_recall`` for runs and cascade benchmarks)."""
        return self.sources[0].primary if self.sources else DEFAULT_PRIMARY


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _field(data: dict, key: str, path: Path, kind: type | tuple[type, ...] = object) -> Any:
    if key not in data:
        raise ReportInputError(f"{path}: field {key!r} missing (written by an older or different tool?)")
    if not isinstance(data[key], kind):
        raise ReportInputError(f"{path}: field {key!r} has an unexpected type {type(data[key]).__name__}")
    return data[key]


def _number(value: Any, where: str) -> float:
    """A stored metric value as a float: a number, or ``null`` (undefined, read as NaN); else the input is bad."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportInputError(f"{where}: expected a number or null, got {type(value).__name__} {value!r:.40}")
    return float(value)


def _checked_row(row: ReportRow, path: Path) -> ReportRow:
    """``row`` with every metric cell and loss-curve point checked as numbers (``null`` -> NaN).

    Raises:
        ReportInputError: a cell that is not ``{mean, std, values}`` of numbers, or a curve that is not a list of
            numbers (names the file, the row and the metric).
    """
    for metric, cell in row.metrics.items():
        where = f"{path}: row {row.name!r}, metric {metric!r}"
        values = cell.get("values", [])
        if not isinstance(values, list):
            raise ReportInputError(f"{where}: 'values' must be a list, got {type(values).__name__}")
        cell["mean"] = _number(cell.get("mean"), f"{where}, 'mean'")
        cell["std"] = _number(cell.get("std", 0.0), f"{where}, 'std'")
        cell["values"] = [_number(v, f"{where}, 'values'") for v in values]
    for curve in row.curves:
        if not isinstance(curve, list):
            raise ReportInputError(f"{path}: row {row.name!r}: {LOSS_CURVE_KEY} must be a list of numbers")
        curve[:] = [_number(v, f"{path}: row {row.name!r}, {LOSS_CURVE_KEY}") for v in curve]
    return row


def _versions(metrics: dict) -> dict[str, str]:
    versions = metrics.get("versions") or {}
    return {f"version: {k}": str(v) for k, v in versions.items()}


def load_run_folder(path: Path) -> tuple[ReportSource, ReportRow]:
    """A ``train`` run folder as a report source and row (label = the folder name).

    Raises:
        ReportInputError: ``metrics.json`` or ``config.json`` missing or malformed (names the file and field).
    """
    metrics_path, config_path = (path / name for name in RUN_FILES)
    for file in (metrics_path, config_path):
        if not file.is_file():
            hint = (
                " (training not finished? continue it with `cascade-ranking train --resume`)"
                if file is metrics_path
                else ""
            )
            raise ReportInputError(
                f"{file}: missing; a run folder written by `train` holds {' and '.join(RUN_FILES)}{hint}"
            )
    metrics, config = _read_json(metrics_path), _read_json(config_path)
    method = _field(metrics, "method", metrics_path, str)
    seed = _field(metrics, "seed", metrics_path, int)
    test = metrics.get("test") or {}
    if not isinstance(test, dict):
        raise ReportInputError(f"{metrics_path}: field 'test' has an unexpected type {type(test).__name__}")
    run = {"row": path.name, "seed": seed, **test}
    if isinstance(metrics.get("train_seconds"), (int, float)):
        run["train_seconds"] = metrics["train_seconds"]
    curve = metrics.get(LOSS_CURVE_KEY) or []
    provenance = {
        "kind": "run folder",
        "methods": method,
        "dataset": str(metrics.get("dataset", "")),
        "data": str(metrics.get("data", "")),
        "stages": ", ".join(map(str, metrics.get("stages", []))),
        "keep": str(config.get("keep", "")),
        "gt_num": str(config.get("gt_num", "")),
        "seeds": str(seed),
        "steps": str(metrics.get("steps", "")),
        "device": str(metrics.get("device", "")),
        "world size": str(metrics.get("world_size", "")),
        **_versions(metrics),
    }
    source = ReportSource(label=path.name, path=path, kind="run", provenance=provenance)
    if not isinstance(curve, list):
        raise ReportInputError(
            f"{metrics_path}: field {LOSS_CURVE_KEY!r} has an unexpected type {type(curve).__name__}"
        )
    row = ReportRow(name=path.name, metrics=summarize([run]).get(path.name, {}), curves=[list(curve)] if curve else [],
                    configs=[config], source=path.name)  # fmt: skip
    return source, _checked_row(row, metrics_path)


def load_benchmark(path: Path) -> tuple[ReportSource, list[ReportRow]]:
    """Benchmark results (a folder with ``results.json``, or the file) as a report source and rows.

    Raises:
        ReportInputError: ``results.json`` malformed (names the file and field).
    """
    results_path = path / RESULTS_FILE if path.is_dir() else path
    folder = results_path.parent
    results = _read_json(results_path)
    summary = _field(results, "summary", results_path, dict)
    runs = _field(results, "runs", results_path, list)
    label = folder.name or str(folder)
    rows: list[ReportRow] = []
    versions: dict[str, str] = {}
    for name, metrics in summary.items():
        if not isinstance(metrics, dict) or not all(isinstance(m, dict) and "mean" in m for m in metrics.values()):
            raise ReportInputError(f"{results_path}: summary row {name!r} is not {{metric: {{mean, std, values}}}}")
        seeds = [r.get("seed") for r in runs if isinstance(r, dict) and r.get("row") == name]
        curves: list[list[float]] = []
        configs: list[dict] = []
        for seed in seeds:
            for run_dir in (folder / "runs" / f"{name}-seed{seed}", folder / "runs" / run_name(name, seed)):
                if all((run_dir / f).is_file() for f in RUN_FILES):
                    metrics_json = _read_json(run_dir / RUN_FILES[0])
                    configs.append(_read_json(run_dir / RUN_FILES[1]))
                    if isinstance(metrics_json.get(LOSS_CURVE_KEY), list):
                        curves.append(list(metrics_json[LOSS_CURVE_KEY]))
                    versions = versions or _versions(metrics_json)
                    break
        rows.append(_checked_row(ReportRow(name=str(name), metrics=metrics, curves=curves,
                                           configs=configs, source=label), results_path))  # fmt: skip
    provenance = {
        "kind": f"benchmark ({results.get('task', 'cascade')})",
        "methods": ", ".join(map(str, summary)),
        "dataset": str(results.get("dataset", "")),
        "data": str(results.get("data", "")),
        "stages": ", ".join(map(str, results.get("stages", []))),
        "keep": str(results.get("keep", "")),
        "gt_num": str(results.get("gt_num", "")),
        "seeds": f"0..{results['repeats'] - 1}" if isinstance(results.get("repeats"), int) else "",
        **versions,
    }
    source = ReportSource(label, results_path, "benchmark", provenance, primary=primary_metric(results))
    return source, rows


def load_inputs(inputs: Sequence[str | Path]) -> ReportData:
    """Read every input (run folder, benchmark folder or ``results.json``) into :class:`ReportData`.

    Row names are made unique: with several inputs a benchmark's rows are prefixed with its label
    (``"<label>: <row>"``), and repeated labels get their parent folder's name.

    Raises:
        ReportInputError: no inputs; a path that does not exist; a path that is neither a run folder nor
            benchmark results (the message names the path and what was expected); a malformed file.
    """
    if not inputs:
        raise ReportInputError("no inputs: give run folders (written by `train`) or benchmark results folders")
    sources: list[ReportSource] = []
    groups: list[list[ReportRow]] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise ReportInputError(f"{path}: no such file or folder")
        if path.is_file() and path.name in RUN_FILES:  # a run's metrics.json / config.json: its folder
            path = path.parent
        if path.is_dir() and any((path / f).is_file() for f in RUN_FILES):
            source, row = load_run_folder(path)
            sources.append(source)
            groups.append([row])
        elif (path.is_dir() and (path / RESULTS_FILE).is_file()) or (path.is_file() and path.suffix == ".json"):
            source, bench_rows = load_benchmark(path)
            sources.append(source)
            groups.append(bench_rows)
        else:
            raise ReportInputError(
                f"{path}: neither a run folder (expected {' and '.join(RUN_FILES)}, written by `train`) nor "
                f"benchmark results (expected {RESULTS_FILE} or a folder holding it, written by `benchmark`)"
            )
    labels = [s.label for s in sources]
    for source in sources:
        if labels.count(source.label) > 1:
            folder = source.path if source.kind == "run" else source.path.parent
            source.label = f"{folder.parent.name}/{folder.name}"
    multi = len(sources) > 1
    rows: list[ReportRow] = []
    for source, group in zip(sources, groups):
        for row in group:
            row.source = source.label
            if source.kind == "run":
                row.name = source.label
            elif multi:
                row.name = f"{source.label}: {row.name}"
            rows.append(row)
    names = [r.name for r in rows]
    for i, row in enumerate(rows):
        if names.count(row.name) > 1:
            row.name = f"{row.name} [{i + 1}]"
    return ReportData(sources=sources, rows=rows)


def config_differences(rows: Sequence[ReportRow]) -> dict[str, dict[str, str]]:
    """``{key: {row name: value text}}`` for every configuration key whose value differs between runs.

    All runs of all rows are compared (a benchmark row's seeds too); a row whose runs disagree shows their values
    joined by ``", "``; a key missing from a run counts as a different value (shown as ``"—"``). Keys in
    :data:`IGNORED_CONFIG_KEYS` are left out.
    """
    configs = [c for r in rows for c in r.configs]
    keys = dict.fromkeys(k for c in configs for k in c)
    out: dict[str, dict[str, str]] = {}
    for key in keys:
        values = [c.get(key, _MISSING) for c in configs]
        if key in IGNORED_CONFIG_KEYS or all(v == values[0] for v in values):
            continue
        out[key] = {}
        for r in rows:
            if r.configs:
                texts = list(dict.fromkeys(_value_text(c.get(key, _MISSING)) for c in r.configs))
                out[key][r.name] = ", ".join(texts)
    return out


def _cell(metric: str, m: dict[str, Any] | None) -> tuple[str, str]:
    """``(text, attributes)`` of a metric cell."""
    if m is None:
        return "", ""
    digits = 1 if metric == "train_seconds" else 4
    n = len(m.get("values", [])) or 1
    text = f"{m['mean']:.{digits}f}" + (f" ± {m['std']:.{digits}f}" if n > 1 else "")
    return text, f' data-mean="{m["mean"]!r}" data-std="{m["std"]!r}" data-n="{n}"'


def _value_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _table(header: list[str], body: list[list[str]], *, cls: str) -> str:
    """HTML table; every cell is given as already-escaped HTML (``<td ...>`` attributes included or not)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    rows = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def metrics_table_html(rows: Sequence[ReportRow]) -> str:
    """The metrics table: one row per report row, one column per metric (joint recall first)."""
    cols = metric_columns({r.name: r.metrics for r in rows})
    header = ["row", "seeds"] + [html.escape(c) for c in cols]
    body = []
    for r in rows:
        n = max((len(m.get("values", [])) for m in r.metrics.values()), default=0)
        cells = [html.escape(r.name), str(n)]
        for c in cols:
            text, attrs = _cell(c, r.metrics.get(c))
            cells.append(f'<td class="num" data-metric="{html.escape(c, quote=True)}"{attrs}>{html.escape(text)}</td>')
        body.append(cells)
    return _table(header, body, cls="metrics")


def _draw_primary(ax, rows: Sequence[ReportRow], metric: str = DEFAULT_PRIMARY) -> None:
    """Bars of ``metric`` (mean ± std) for the rows that have it; reference rows in grey."""
    label = metric.replace("_", " ")
    undefined = [r.name for r in rows if metric in r.metrics and not _finite_cell(r.metrics[metric])]
    if undefined:
        log.warning("%s undefined (NaN or null) for %s; left out of the chart", label, ", ".join(undefined))
    shown = [r for r in rows if metric in r.metrics and r.name not in undefined]
    if not shown:
        ax.text(0.5, 0.5, f"no {label} to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    means = [r.metrics[metric]["mean"] for r in shown]
    stds = [r.metrics[metric]["std"] for r in shown]
    colors = ["#bbbbbb" if r.reference else "#3b75af" for r in shown]
    ax.bar(range(len(shown)), means, yerr=stds, capsize=4, color=colors)
    ax.set_xticks(range(len(shown)), [r.name for r in shown], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{label} (test, mean ± std)")
    lo, hi = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, hi + 0.03) if hi < 1.0 else hi + 0.03)
    ax.set_title(label, fontsize=10)


def _finite_cell(cell: dict[str, Any]) -> bool:
    return math.isfinite(cell["mean"]) and math.isfinite(cell["std"])


def _draw_loss_curves(ax, rows: Sequence[ReportRow]) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    shown = [r for r in rows if r.curves]
    if not shown:
        ax.text(0.5, 0.5, "no training-loss curves", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    for r in shown:
        length = min(len(c) for c in r.curves)
        mean = np.mean([c[:length] for c in r.curves], axis=0)
        steps = 1 + LOSS_CURVE_EVERY * np.arange(length)
        label = r.name if len(r.curves) == 1 else f"{r.name} (mean of {len(r.curves)} seeds)"
        ax.plot(steps, mean, label=label, linewidth=1.2, marker="o" if length < 20 else None, markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss (every 10th step)", fontsize=10)
    ax.legend(fontsize=7)


def _figure(draw, rows: Sequence[ReportRow], size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    draw(fig.subplots(), rows)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;font-size:.9em}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}img{max-width:100%}.note{color:#666;font-size:.85em}"""


def render_html(data: ReportData, *, title: str = "cascade-ranking: run comparison") -> str:
    """The report as one self-contained HTML document (charts embedded as base64 PNG; all text escaped)."""
    width = max(6.0, 0.8 * len(data.rows) + 2)
    primary = data.primary
    bars = _img(_png(_figure(partial(_draw_primary, metric=primary), data.rows, (width, 4.2))), primary)
    curves = _img(_png(_figure(_draw_loss_curves, data.rows, (8.0, 4.5))), "training loss")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    prov_keys = list(dict.fromkeys(k for s in data.sources for k in s.provenance))
    provenance = _table(
        ["", *(html.escape(s.label) for s in data.sources)],
        [[html.escape("path"), *(html.escape(str(s.path)) for s in data.sources)]]
        + [[html.escape(k), *(html.escape(s.provenance.get(k, "")) for s in data.sources)] for k in prov_keys],
        cls="provenance",
    )
    diffs = config_differences(data.rows)
    configured = [r for r in data.rows if r.configs]
    if diffs:
        differences = _table(
            ["key", *(html.escape(r.name) for r in configured)],
            [[html.escape(k), *(html.escape(v[r.name]) for r in configured)] for k, v in diffs.items()],
            cls="config-diff",
        )
    else:
        runs = sum(len(r.configs) for r in data.rows)
        why = "fewer than two runs with a saved configuration" if runs < 2 else "every run has the same one"
        differences = f'<p class="note">No configuration differences ({html.escape(why)}).</p>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated {html.escape(stamp)} from {len(data.sources)} input(s). Metrics are on the test '
        "partitions; mean ± std (sample std) over seeds where a row has several.</p>",
        "<h2>Metrics</h2>",
        metrics_table_html(data.rows),
        f"<h2>{html.escape(primary.replace('_', ' ').capitalize())}</h2>",
        bars,
        "<h2>Training loss</h2>",
        curves,
        "<h2>Provenance</h2>",
        provenance,
        "<h2>Configuration differences</h2>",
        differences,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def render_png(data: ReportData) -> bytes:
    """One PNG figure with the joint-recall bar chart and the training-loss curves side by side."""
    from matplotlib.figure import Figure

    width = max(6.0, 0.8 * len(data.rows) + 2)
    fig = Figure(figsize=(width + 8.0, 4.8))
    left, right = fig.subplots(1, 2, width_ratios=[width, 8.0])
    _draw_primary(left, data.rows, data.primary)
    _draw_loss_curves(right, data.rows)
    fig.tight_layout()
    return _png(fig)


def write_report(inputs: Sequence[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Compare the runs of ``inputs`` in one file: ``out`` ending in ``.html`` (the full report) or ``.png``
    (the charts). Written atomically; nothing is written when an input is bad.

    Args:
        inputs: run folders (``train``) and/or benchmark results (a folder with ``results.json``, or the file).
        out: the output file, ``*.html`` or ``*.png``.
        title: the HTML report's title.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ReportInputError: a bad input (see :func:`load_inputs`), or ``out`` ending in neither ``.html``
            nor ``.png``.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise ReportInputError(f"--out {out}: expected a file name ending in .html or .png")
    data = load_inputs(inputs)
    if suffix == ".png":
        png = render_png(data)
        with atomic_path(out) as tmp:
            tmp.write_bytes(png)
    else:
        write_text_atomic(out, render_html(data, title=title or "cascade-ranking: run comparison"))
    log.info("report of %d row(s) from %d input(s) written to %s", len(data.rows), len(data.sources), out)
    return out

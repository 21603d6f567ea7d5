"""The run-comparison report, parsed back: numbers from the JSON files, embedded charts, config differences."""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import struct
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from cascade_ranking.cli import app
from cascade_ranking.experiments.cascade import run_benchmark
from cascade_ranking.experiments.report import ReportInputError, load_inputs, write_report
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.loop import train
from conftest import make_tiny_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Report(HTMLParser):
    """Tables (by class) as lists of rows of ``(text, attributes)`` cells, header rows included; images."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.images: list[dict] = []
        self._table = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ["", attrs]
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append((self._cell[0], self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def rows(self, table: str) -> dict[str, dict[str, tuple[str, dict]]]:
        """``{first cell: {column header: cell}}`` of a table."""
        header, *body = self.tables[table]
        names = [text for text, _ in header]
        return {r[0][0]: dict(zip(names, r)) for r in body}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real tiny runs (LCRON; BCE with another learning rate) and a benchmark (BCE, two seeds)."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_tiny_dataset(data)
    a, b = root / "lcron-run", root / "bce-run"
    train(TrainConfig(data=data, device="cpu", method="lcron", passes=3), data=data, run_dir=a)
    train(TrainConfig(data=data, device="cpu", method="bce", lr=0.02), data=data, run_dir=b)
    bench = root / "bench"
    run_benchmark(methods=["bce"], data=data, out_dir=bench, repeats=2, base=TrainConfig(data=data, device="cpu"))
    return root, a, b, bench


def _json(path):
    return json.loads(path.read_text())


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC
    return struct.unpack(">II", png[16:24])


def test_report_of_two_runs(runs, tmp_path):
    _, a, b, _ = runs
    out = write_report([a, b], tmp_path / "report.html")
    report = _Report(out.read_text())

    table = report.rows("metrics")
    assert list(table) == ["lcron-run", "bce-run"]
    for run in (a, b):
        test = _json(run / "metrics.json")["test"]
        row = table[run.name]
        assert row["seeds"][0] == "1"
        for metric, value in test.items():
            if metric == "requests":
                continue
            text, attrs = row[metric]
            assert float(attrs["data-mean"]) == value and attrs["data-n"] == "1"
            assert text == f"{value:.4f}"  # one seed: no ± std
        assert "joint_recall" in test

    assert len(report.images) == 2
    for img in report.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        width, height = _png_size(base64.b64decode(img["src"][len(prefix) :]))
        assert width > 100 and height > 100

    ca, cb = _json(a / "config.json"), _json(b / "config.json")
    differing = {k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k)}
    assert {"method", "lr", "passes"} <= differing
    diff = report.rows("config-diff")
    assert set(diff) == differing
    assert diff["lr"]["lcron-run"][0] == "0.01" and diff["lr"]["bce-run"][0] == "0.02"

    provenance = report.rows("provenance")
    versions = _json(a / "metrics.json")["versions"]
    assert provenance["version: torch"]["lcron-run"][0] == versions["torch"]
    assert provenance["dataset"]["bce-run"][0] == "tiny"


def test_report_of_a_benchmark_has_mean_and_std_over_seeds(runs, tmp_path):
    _, _, _, bench = runs
    results = _json(bench / "results.json")
    for source in (bench, bench / "results.json"):
        report = _Report(write_report([source], tmp_path / "report.html").read_text())
        table = report.rows("metrics")
        assert list(table) == ["bce", "random", "popularity"]
        for name, row in table.items():
            seeds = [r for r in results["runs"] if r["row"] == name]
            assert row["seeds"][0] == str(len(seeds)) == "2"
            for metric in ("joint_recall", "stage_recall/prerank", "ndcg@10/retrieval"):
                values = [r[metric] for r in seeds]
                mean, std = statistics.fmean(values), statistics.stdev(values)
                text, attrs = row[metric]
                assert float(attrs["data-mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-15)
                assert float(attrs["data-std"]) == pytest.approx(std, rel=1e-12, abs=1e-15)
                assert text == f"{mean:.4f} ± {std:.4f}"
        assert table["random"]["train_seconds"][0] == ""  # reference rows are not trained
        assert table["bce"]["train_seconds"][0]
        assert len(report.images) == 2
        diff = report.rows("config-diff")  # the two seeds' runs differ only in their seed
        assert list(diff) == ["seed"] and diff["seed"]["bce"][0] == "0, 1"

    # the loss curves come from the benchmark's run folders
    (row,) = [r for r in load_inputs([bench]).rows if r.name == "bce"]
    assert row.curves == [
        _json(bench / "runs" / f"bce-seed{s}" / "metrics.json")["loss_curve_every_10_steps"] for s in (0, 1)
    ]


def test_benchmark_writes_its_report_next_to_the_chart(runs):
    _, _, _, bench = runs
    report = _Report((bench / "report.html").read_text())
    assert list(report.rows("metrics")) == ["bce", "random", "popularity"] and len(report.images) == 2


def test_runs_and_benchmarks_together_get_unique_row_names(runs, tmp_path):
    _, a, b, bench = runs
    out = write_report([a, bench, b], tmp_path / "r.html")
    table = _Report(out.read_text()).rows("metrics")
    assert list(table) == ["lcron-run", "bench: bce", "bench: random", "bench: popularity", "bce-run"]

    twin = tmp_path / "other" / "lcron-run"  # the same folder name twice: parent names tell them apart
    shutil.copytree(a, twin)
    names = [r.name for r in load_inputs([a, twin]).rows]
    assert names == [f"{a.parent.name}/lcron-run", "other/lcron-run"]


def test_png_output_is_one_figure(runs, tmp_path):
    _, a, b, bench = runs
    out = write_report([a, b, bench], tmp_path / "report.png")
    width, height = _png_size(out.read_bytes())
    assert width > height > 100


def test_text_is_escaped(runs, tmp_path):
    _, a, _, _ = runs
    odd = tmp_path / "<b>run&"
    shutil.copytree(a, odd)
    text = write_report([odd], tmp_path / "r.html", title="<i>title</i>").read_text()
    assert "<b>run&" not in text and "&lt;b&gt;run&amp;" in text
    assert "<i>title" not in text and "&lt;i&gt;title&lt;/i&gt;" in text


def test_report_command(runs, tmp_path):
    _, a, b, _ = runs
    out = tmp_path / "cmp.html"
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert list(_Report(out.read_text()).rows("metrics")) == ["lcron-run", "bce-run"]

    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")])
    assert bad.exit_code == 2 and "nope: no such file or folder" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.html").exists()


def test_bad_inputs_are_clear_errors_and_write_nothing(runs, tmp_path):
    _, a, _, bench = runs
    out = tmp_path / "r.html"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportInputError, match=r"empty: neither a run folder \(expected metrics.json and config"):
        write_report([a, empty], out)

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(a / "config.json", unfinished / "config.json")
    with pytest.raises(ReportInputError, match=r"unfinished/metrics.json: missing.*--resume"):
        write_report([unfinished], out)

    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(ReportInputError, match=r"broken/metrics.json: not readable JSON"):
        write_report([broken], out)

    results = _json(bench / "results.json")
    del results["summary"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ReportInputError, match=r"results.json: field 'summary' missing"):
        write_report([tmp_path / "results.json"], out)

    with pytest.raises(ReportInputError, match=r"expected a file name ending in .html or .png"):
        write_report([a], tmp_path / "r.txt")
    with pytest.raises(ReportInputError, match="no inputs"):
        write_report([], out)
    assert not out.exists() and not (tmp_path / "r.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

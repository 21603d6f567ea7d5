"""The benchmark: methods x seeds, reference rows, result files, resume."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from cascade_ranking.cli import app
from cascade_ranking.experiments.cascade import run_benchmark
from cascade_ranking.training.config import TrainConfig


def test_benchmark_writes_tables_and_chart_and_resumes(tmp_path, tiny_dataset):
    out = tmp_path / "bench"
    base = TrainConfig(data=tiny_dataset, device="cpu")
    results = run_benchmark(methods=["lcron"], data=tiny_dataset, out_dir=out, repeats=2, base=base)
    summary = results["summary"]
    assert list(summary) == ["lcron", "random", "popularity"]
    joint = summary["lcron"]["joint_recall"]
    assert len(joint["values"]) == 2
    assert abs(joint["mean"] - sum(joint["values"]) / 2) < 1e-12
    for name in ("results.json", "results.csv", "results.md", "joint_recall.png"):
        assert (out / name).is_file()
    assert (out / "joint_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["lcron", "random", "popularity"]
    assert "| lcron |" in (out / "results.md").read_text()

    # resume: finished runs are reused (their metrics files are not rewritten)
    stamp = (out / "runs" / "lcron-seed0" / "metrics.json").stat().st_mtime_ns
    again = run_benchmark(methods=["lcron"], data=tiny_dataset, out_dir=out, repeats=2, base=base)
    assert (out / "runs" / "lcron-seed0" / "metrics.json").stat().st_mtime_ns == stamp
    assert again["summary"]["lcron"]["joint_recall"] == joint
    assert json.loads((out / "results.json").read_text())["repeats"] == 2


def test_benchmark_command(tmp_path, tiny_dataset):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--methods",
            "lcron",
            "--repeats",
            "1",
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| lcron |" in result.stdout and "| popularity |" in result.stdout


def test_benchmark_rejects_unknown_methods(tiny_dataset):
    result = CliRunner().invoke(app, ["benchmark", "--methods", "lcron,nope", "--data", str(tiny_dataset)])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output


def test_benchmark_command_from_a_config_file(tmp_path, tiny_dataset):
    config = tmp_path / "bench.yaml"
    config.write_text(f"methods: [bce]\nrepeats: 1\nmodels: [dssm, ranktower]\ndata: {tiny_dataset}\ndevice: cpu\n")
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["benchmark", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "runs" / "bce-seed0" / "config.json").read_text())
    assert saved["models"] == ["dssm", "ranktower"] and saved["method"] == "bce"

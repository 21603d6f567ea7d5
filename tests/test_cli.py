"""The `cascade-ranking` command as a user runs it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cascade_ranking.cli import app

runner = CliRunner()


def test_train_prints_a_metrics_table_and_writes_the_run(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--method", "lcron", "--data", str(tiny_dataset), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "joint_recall" in result.stdout and "test" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["method"] == "lcron"
    again = runner.invoke(app, ["evaluate", str(out)])
    assert again.exit_code == 0, again.output
    assert "joint_recall" in again.stdout


def test_unknown_method_is_a_clear_error(tiny_dataset):
    result = runner.invoke(app, ["train", "--method", "nope", "--data", str(tiny_dataset)])
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output and "lcron" in result.output


def test_keep_that_does_not_fit_is_a_clear_error(tiny_dataset):
    result = runner.invoke(app, ["train", "--data", str(tiny_dataset), "--keep", "30,20"])
    assert result.exit_code == 2
    assert "cannot keep 30 of only 12 candidates" in result.output


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_missing_column_names_file_and_column(tiny_dataset):
    import pyarrow.parquet as pq

    path = tiny_dataset / "part-00.parquet"
    pq.write_table(pq.read_table(path).drop(["stage"]), path)
    result = runner.invoke(app, ["train", "--data", str(tiny_dataset)])
    assert result.exit_code == 2
    assert "part-00.parquet: column 'stage' missing" in result.output


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.json: missing" in result.output


def test_reference_scorers_command(tiny_dataset):
    result = runner.invoke(app, ["reference", "--data", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    assert "random" in result.stdout and "popularity" in result.stdout


def test_prerank_model_puts_ranktower_in_the_prerank_slot(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--data", str(tiny_dataset), "--prerank-model", "ranktower", "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["models"] == ["dssm", "ranktower"]


def test_prepare_synthetic_recflow_layout_then_convert_then_train(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "data"
    result = runner.invoke(
        app,
        ["prepare", "synthetic", str(raw), "--requests", "400", "--days", "3", "--layout", "recflow", "--stages", "3"],
    )
    assert result.exit_code == 0, result.output
    assert f"cascade-ranking prepare recflow {raw} DATA" in result.stdout
    result = runner.invoke(app, ["prepare", "recflow", str(raw), str(data), "--stages", "3"])
    assert result.exit_code == 0, result.output
    assert "test" in result.stdout
    result = runner.invoke(
        app, ["train", "--data", str(data), "--method", "lcron", "--device", "cpu", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "stage_recall/rank" in result.stdout


def test_prepare_recflow_missing_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prepare", "recflow", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nope" in result.output

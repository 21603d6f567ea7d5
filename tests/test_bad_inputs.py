"""The bad-input corpus: malformed command lines, config files, stores, RecFlow and MovieLens files.

Every case asserts a clear, specific error (exit code 2 and one ``error:`` line naming the option, file, column
or field; or a library exception naming them) or a documented recovery checked by value; never a traceback from
inside torch/pyarrow/numpy, never a partial output file, never a silent NaN. Cases that reveal a bug are marked
``xfail(strict=True)`` with the exact problem, so fixing the bug turns them into failures to un-mark.

Bad inputs already covered elsewhere (not repeated here):

==========================================================  =====================================================
case                                                        test
==========================================================  =====================================================
unknown method, keep > N (``--keep``), missing dataset      ``test_cli.py``
missing Parquet column (CLI), ``evaluate`` on a non-run     ``test_cli.py``
``prepare recflow`` on a missing folder                     ``test_cli.py``
unknown / misspelt config key, ``lr = -1``, bad TOML        ``test_config.py``
``stages = 4``, non-TOML/YAML file, YAML list, missing      ``test_config.py``
file, benchmark-only keys in a train config                 ``test_config.py``
non-finite loss (stop / ``--skip-nonfinite``)               ``test_guards.py``
write: ids outside the vocabulary, missing / unexpected     ``test_store.py``
columns, wrong widths, non-finite floats, failed write      ``test_store.py``
read: missing column, wrong list width, truncated file      ``test_store.py``
missing dataset / schema.json / partition file, schema      ``test_store.py``
field errors, keep sizes that do not fit                    ``test_store.py``
GroupLens missing file / folder, unparsable rating, short   ``test_movielens.py``
line; RecBole missing column, untyped header, bad           ``test_movielens.py``
timestamp, several ``.inter``; not ML-100K counts; bad      ``test_movielens.py``
download, no network, corrupted cache                       ``test_movielens.py``
run folders (locks, ``--overwrite``, kill -9), benchmark    ``test_faults.py``
reuse, resume options, value ranges, strict JSON, YAML      ``test_faults.py``
aliases, leftovers of killed processes                      ``test_faults.py``
RecFlow missing id_cnt key, missing day file, request       ``test_recflow.py``
missing from a pickle, wrong flow / history width,          ``test_recflow.py``
truncated feather, missing feather column, id outside       ``test_recflow.py``
id_cnt, unrelated ``out`` folder, bad stages / days         ``test_recflow.py``
==========================================================  =====================================================
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cascade_ranking.cli import app
from cascade_ranking.data.store import open_dataset, read_partition, write_partition
from cascade_ranking.datasets.movielens import DataFormatError, movielens_log, read_movielens
from cascade_ranking.datasets.recflow import RecFlowFormatError, convert_recflow
from cascade_ranking.datasets.synthetic import simulate, small_config
from conftest import make_tiny_dataset

runner = CliRunner()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not block reads")


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line, and it names every needle. Returns the line."""
    out = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code == 2, f"exit code {result.exit_code}: {out}"
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1, out
    rest = out[out.index("error:") :].splitlines()
    assert not any(line.strip() for line in rest[1:]), out  # the message is one line, and the last output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def set_column(path: Path, name: str, column: pa.Array | pa.ChunkedArray) -> None:
    """Replace one column of a Parquet file, bypassing the store's writer (a file from another tool)."""
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index(name), name, column), path)


def fixed(values: np.ndarray, typ: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=typ), values.shape[1])


def column(path: Path, name: str) -> np.ndarray:
    col = pq.read_table(path).column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).copy()
    return col.to_numpy(zero_copy_only=False).copy()


def leftovers(folder: Path) -> list[str]:
    """Temporary files left beside outputs (``.<name>.*.tmp`` / ``.part``)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".part", ".old")))


def train_cli(data: Path, out: Path, *extra) -> object:
    return cli("train", "--data", data, "--device", "cpu", "--out", out, *extra)


# ------------------------------------------------------------------------------------------------------
# command line and config files
# ------------------------------------------------------------------------------------------------------
def _config(tmp: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


CLI_CASES = [
    pytest.param(
        lambda d, t: ["--device", "tpu9"],
        ["tpu9"],
        id="device-unknown",
    ),
    pytest.param(
        lambda d, t: ["--device", "cuda:0"],
        ["cuda:0", "CUDA is not available"],
        id="device-cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
    ),
    pytest.param(lambda d, t: ["--keep=-5,3"], ["keep", "positive"], id="keep-negative"),
    pytest.param(lambda d, t: ["--keep", "8,x"], ["--keep", "8,x", "integers"], id="keep-not-integers"),
    pytest.param(lambda d, t: ["--keep", "5,8"], ["keep", "strictly decrease"], id="keep-increasing"),
    pytest.param(lambda d, t: ["--keep", "8,2"], ["keep", "gt_num=3"], id="keep-below-gt-num"),
    pytest.param(
        lambda d, t: ["--config", _config(t, "keep = [20, 5]\n")],
        ["keep", "cannot keep 20", "12"],
        id="keep-gt-N-config",
    ),
    pytest.param(lambda d, t: ["--models", "dssm"], ["models=['dssm']", "one stage model per keep"], id="models-count"),
    pytest.param(lambda d, t: ["--models", "dssm,gbdt"], ["unknown model 'gbdt'"], id="model-unknown"),
    pytest.param(
        lambda d, t: ["--config", _config(t, "models: [dssm, transformer]\n", "cfg.yaml")],
        ["unknown model 'transformer'"],
        id="model-unknown-config",
    ),
    pytest.param(lambda d, t: ["--loss-param", "tau"], ["--loss-param 'tau'", "KEY=VALUE"], id="loss-param-no-value"),
    pytest.param(
        lambda d, t: ["--loss-param", "taux=3"],
        ["taux"],
        id="loss-param-unknown",
    ),
    pytest.param(
        lambda d, t: ["--config", _config(t, "[loss]\nsmooth = 1\n")],
        ["smooth"],
        id="loss-param-unknown-config",
    ),
    pytest.param(
        lambda d, t: ["--loss-param", "tau=fast"],
        ["tau"],
        id="loss-param-wrong-type",
    ),
    pytest.param(
        lambda d, t: ["--loss-param", "tau=NaN"],
        ["lcron", "tau must be positive", "nan"],
        id="loss-param-nan",
    ),
    pytest.param(
        lambda d, t: ["--lr", "inf"],
        ["lr"],
        id="lr-inf",
    ),
    pytest.param(lambda d, t: ["--batch-size", "0"], ["batch_size", "greater than 0"], id="batch-size-zero"),
    pytest.param(lambda d, t: ["--threads", "0"], ["threads", "greater than 0"], id="threads-zero"),
    pytest.param(lambda d, t: ["--checkpoint-every=-1"], ["checkpoint_every"], id="checkpoint-every-negative"),
    pytest.param(
        lambda d, t: ["--config", _config(t, 'keep = "8,5"\n')], ["cfg.toml", "keep", "list"], id="config-keep-string"
    ),
    pytest.param(
        lambda d, t: ["--config", _config(t, 'passes = "many"\n')],
        ["cfg.toml", "passes", "integer"],
        id="config-passes-word",
    ),
    pytest.param(
        lambda d, t: ["--config", _config(t, "lr = 0.1\nlr = 0.2\n")],
        ["cfg.toml", "not a valid config file"],
        id="config-duplicate-key",
    ),
    pytest.param(
        lambda d, t: ["--config", _config(t, "batch_size: [16]\n", "cfg.yaml")],
        ["cfg.yaml", "batch_size"],
        id="config-batch-size-list",
    ),
    pytest.param(lambda d, t: ["--config", t / "nope.yaml"], ["nope.yaml", "not found"], id="config-file-missing"),
]


@pytest.mark.parametrize(("make_args", "needles"), CLI_CASES)
def test_bad_train_command_line(tiny_dataset, tmp_path, make_args, needles):
    out = tmp_path / "run"
    assert_clean_error(train_cli(tiny_dataset, out, *make_args(tiny_dataset, tmp_path)), *needles)
    assert not (out / "metrics.json").exists()
    assert not (out / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished run on the tiny dataset (module-scoped: trained once)."""
    root = tmp_path_factory.mktemp("run")
    make_tiny_dataset(root / "data")
    result = train_cli(root / "data", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


def test_resume_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    assert_clean_error(cli("train", "--resume", tmp_path / "notes"), "config.json: missing", "notes")


def test_resume_without_checkpoint(tmp_path, trained_run):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "config.json", run / "config.json")
    assert_clean_error(cli("train", "--resume", run), "checkpoint.pt: missing", "nothing to resume")


def test_resume_with_a_corrupt_checkpoint(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert_clean_error(cli("train", "--resume", run), "checkpoint.pt", "not a readable checkpoint")


def test_resume_with_a_corrupt_config_json(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text('{"method": "lcron", "keep": [8, ')
    assert_clean_error(cli("train", "--resume", run), "config.json")


def test_evaluate_unknown_role(trained_run):
    assert_clean_error(cli("evaluate", trained_run, "--role", "holdout"), "no partition with role 'holdout'")


def test_evaluate_without_checkpoint(tmp_path, trained_run):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "config.json", run / "config.json")
    assert_clean_error(cli("evaluate", run), "checkpoint.pt: missing")


def test_evaluate_on_a_dataset_with_another_schema(tmp_path, trained_run):
    other = tmp_path / "other"
    make_tiny_dataset(other, num_candidates=12, history_length=7)
    schema = json.loads((other / "schema.json").read_text())
    schema["features"][2]["vocab_size"] = 99  # item_id: another vocabulary
    (other / "schema.json").write_text(json.dumps(schema))
    assert_clean_error(cli("evaluate", trained_run, "--data", other), "item_id")


PREPARE_CASES = [
    pytest.param(
        lambda t: ["prepare", "synthetic", t / "s", "--requests", "0", "--days", "2"], ["requests=0"], id="synth-zero"
    ),
    pytest.param(
        lambda t: ["prepare", "synthetic", t / "s", "--requests", "10", "--layout", "parquet"],
        ["layout='parquet'"],
        id="synth-layout",
    ),
    pytest.param(
        lambda t: ["prepare", "synthetic", t / "s", "--requests", "10", "--days", "2", "--stages", "4"],
        ["stages=4"],
        id="synth-stages",
    ),
    pytest.param(
        lambda t: ["prepare", "recflow", t, t / "o", "--days", "2024-02-30..2024-03-01"],
        ["2024-02-30"],
        id="recflow-impossible-date",
    ),
    pytest.param(
        lambda t: ["prepare", "recflow", t, t / "o", "--test-days=-1"], ["test_days=-1"], id="recflow-test-days"
    ),
    pytest.param(
        lambda t: ["prepare", "movielens-100k", "--src", t, "--out", t / "o", "--stages", "4"],
        ["stages=4"],
        id="movielens-stages",
    ),
    pytest.param(
        lambda t: ["prepare", "movielens-100k", "--src", t / "nowhere", "--out", t / "o"],
        ["nowhere", "no such file or folder"],
        id="movielens-src-missing",
    ),
]


@pytest.mark.parametrize(("make_args", "needles"), PREPARE_CASES)
def test_bad_prepare_command_line(tmp_path, make_args, needles):
    (tmp_path / "all_stage").mkdir()
    (tmp_path / "all_stage" / "2024-01-13.feather").write_bytes(b"")
    assert_clean_error(cli(*make_args(tmp_path)), *needles)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------------
# the Parquet store
# ------------------------------------------------------------------------------------------------------
def _corrupt_store(d: Path, case: str) -> None:
    """Break the tiny dataset ``d`` in one way (files written by another tool, bypassing the store's writer)."""
    part = d / "part-00.parquet"
    test = d / "part-02.parquet"
    if case == "request-id-strings":
        set_column(part, "request_id", pa.array([f"r{i}" for i in range(50)]))
    elif case == "item-id-floats":
        ids = column(part, "item.item_id").astype(np.float64) + 0.5
        set_column(part, "item.item_id", fixed(ids, pa.float64()))
    elif case == "item-id-beyond-vocab":
        ids = column(part, "item.item_id")
        ids[0, 0] = 1000
        set_column(part, "item.item_id", fixed(ids, pa.int64()))
    elif case == "user-id-negative":
        ids = column(part, "user.user_id")
        ids[3] = -7
        set_column(part, "user.user_id", pa.array(ids))
    elif case == "history-id-beyond-vocab":
        ids = column(part, "history.item_id")
        ids[1, 0] = 40
        set_column(part, "history.item_id", fixed(ids, pa.int64()))
    elif case == "label-nan-train":
        label = column(part, "label")
        label[2, 0] = np.nan
        set_column(part, "label", fixed(label, pa.float32()))
    elif case == "label-inf-test":
        label = column(test, "label")
        label[0, 0] = np.inf
        set_column(test, "label", fixed(label, pa.float32()))
    elif case == "label-null":
        label = column(part, "label").astype(object)
        label[0, 1] = None
        set_column(part, "label", fixed(label, pa.float32()))
    elif case == "stage-beyond-funnel":
        stage = column(part, "stage")
        stage[0, 0] = 9  # 4 funnel positions (0..3)
        set_column(part, "stage", fixed(stage, pa.int8()))
    elif case == "duplicate-request-ids":
        rid = column(part, "request_id")
        rid[1] = rid[0]
        set_column(part, "request_id", pa.array(rid))
    elif case == "row-count-mismatch":
        pq.write_table(pq.read_table(part).slice(0, 40), part)
    elif case == "schema-truncated":
        text = (d / "schema.json").read_text()
        (d / "schema.json").write_text(text[: len(text) // 2])
    elif case == "schema-version":
        schema = json.loads((d / "schema.json").read_text())
        schema["version"] = 99
        (d / "schema.json").write_text(json.dumps(schema))
    elif case == "schema-no-train":
        schema = json.loads((d / "schema.json").read_text())
        schema["partitions"] = [p for p in schema["partitions"] if p["role"] != "train"]
        (d / "schema.json").write_text(json.dumps(schema))
    elif case == "partition-is-a-folder":
        part.unlink()
        part.mkdir()
    else:  # pragma: no cover
        raise AssertionError(case)


STORE_CASES = [
    pytest.param("request-id-strings", ["part-00.parquet", "'request_id'"], id="request-id-strings"),
    pytest.param(
        "item-id-floats",
        ["part-00.parquet", "'item.item_id'"],
        id="item-id-floats",
    ),
    pytest.param(
        "item-id-beyond-vocab",
        ["part-00.parquet", "'item.item_id'"],
        id="item-id-beyond-vocab",
    ),
    pytest.param("user-id-negative", ["part-00.parquet", "'user.user_id'"], id="user-id-negative"),
    pytest.param(
        "history-id-beyond-vocab",
        ["part-00.parquet", "'history.item_id'"],
        id="history-id-beyond-vocab",
    ),
    pytest.param(
        "label-nan-train",
        ["part-00.parquet", "'label'"],
        id="label-nan-train",
    ),
    pytest.param(
        "label-inf-test",
        ["part-02.parquet", "'label'"],
        id="label-inf-test",
    ),
    pytest.param("label-null", ["part-00.parquet", "'label'", "null"], id="label-null"),
    pytest.param(
        "stage-beyond-funnel",
        ["part-00.parquet", "'stage'"],
        id="stage-beyond-funnel",
    ),
    pytest.param(
        "duplicate-request-ids",
        ["part-00.parquet", "'request_id'", "duplicate"],
        id="duplicate-request-ids",
    ),
    pytest.param("row-count-mismatch", ["part-00.parquet", "40 requests", "50"], id="row-count-mismatch"),
    pytest.param("schema-truncated", ["schema.json", "not readable JSON"], id="schema-truncated"),
    pytest.param(
        "schema-version",
        ["schema.json", "version 99"],
        id="schema-version",
    ),
    pytest.param("schema-no-train", ["no partition with role 'train'"], id="schema-no-train"),
    pytest.param(
        "partition-is-a-folder",
        ["part-00.parquet"],
        id="partition-is-a-folder",
    ),
]


@pytest.mark.parametrize(("case", "needles"), STORE_CASES)
def test_malformed_store_is_a_clear_training_error(tmp_path, case, needles):
    data = tmp_path / "data"
    make_tiny_dataset(data)
    _corrupt_store(data, case)
    out = tmp_path / "run"
    assert_clean_error(train_cli(data, out), *needles)
    assert not (out / "metrics.json").exists()


def _rewrite_partition(d: Path, name: str, update) -> None:
    """Read a partition, change its arrays with ``update(arrays) -> arrays``, write it back with the store."""
    schema = open_dataset(d)
    part = next(p for p in schema.partitions if p.name == name)
    arrays = update(read_partition(d, schema, part))
    new = part.model_copy(update={"num_requests": len(arrays["request_id"])})
    schema = schema.model_copy(update={"partitions": [new if p.name == name else p for p in schema.partitions]})
    write_partition(d, schema, new, arrays)
    (d / "schema.json").write_text(schema.to_json())


def test_empty_training_partitions_train_nothing_but_evaluation_works(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data, num_partitions=4)
    for name in ("part-00", "part-01"):
        _rewrite_partition(data, name, lambda a: {k: v[:0] for k, v in a.items()})
    result = train_cli(data, tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["train_requests"] == 0 and metrics["final_loss"] is None
    assert metrics["test"]["requests"] == 50
    assert all(np.isfinite(v) for v in metrics["test"].values())


def test_empty_test_partition_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data)
    _rewrite_partition(data, "part-02", lambda a: {k: v[:0] for k, v in a.items()})
    assert_clean_error(train_cli(data, tmp_path / "run"), "part-02", "no request")


def test_requests_with_fewer_valid_candidates_than_keep_keep_them_all(tmp_path):
    """Every request has 4 valid candidates < keep[-1] = 5: every stage keeps all of them, so the final set holds
    the whole ground truth (gt_num = 3) whatever the scores: joint recall is exactly 1 and stage recall too."""
    data = tmp_path / "data"
    make_tiny_dataset(data, padded=False)

    def four_valid(a):
        mask = np.zeros_like(a["mask"])
        mask[:, :4] = True
        a = dict(a, mask=mask)
        for k in ("stage", "label", "item.item_id", "item.genre"):
            a[k] = np.where(mask, a[k], 0).astype(a[k].dtype)
        return a

    for name in ("part-00", "part-01", "part-02"):
        _rewrite_partition(data, name, four_valid)
    result = train_cli(data, tmp_path / "run", "--method", "lcron")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["joint_recall"] == 1.0
    assert metrics["test"]["stage_recall/retrieval"] == 1.0 and metrics["test"]["stage_recall/prerank"] == 1.0
    assert np.isfinite(metrics["final_loss"])


def test_request_without_any_valid_candidate_trains_and_evaluates(tmp_path):
    """A request whose mask is all False contributes no loss and counts as recall 0 (documented in metrics.py)."""
    data = tmp_path / "data"
    make_tiny_dataset(data)

    def empty_first(a):
        a = {k: v.copy() for k, v in a.items()}
        for k in ("mask", "stage", "label", "item.item_id", "item.genre"):
            a[k][0] = 0
        return a

    for name in ("part-00", "part-02"):
        _rewrite_partition(data, name, empty_first)
    result = train_cli(data, tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["final_loss"])
    assert all(np.isfinite(v) for v in metrics["test"].values())


@ROOT_SKIP
def test_unreadable_dataset_folder(tmp_path):  # pragma: no cover - skipped as root
    data = tmp_path / "data"
    make_tiny_dataset(data)
    data.chmod(0)
    try:
        assert_clean_error(train_cli(data, tmp_path / "run"), "data")
    finally:
        data.chmod(0o755)


@ROOT_SKIP
def test_unreadable_partition_file(tmp_path):  # pragma: no cover - skipped as root
    data = tmp_path / "data"
    make_tiny_dataset(data)
    (data / "part-00.parquet").chmod(0)
    try:
        assert_clean_error(train_cli(data, tmp_path / "run"), "part-00.parquet")
    finally:
        (data / "part-00.parquet").chmod(0o644)


def _permission_denied(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


@pytest.mark.parametrize("windowed", [False, True])
def test_permission_denied_on_a_partition_file_even_as_root(tmp_path, monkeypatch, windowed):
    """What chmod 000 does for a normal user, simulated at the open (root reads through chmod)."""
    data = tmp_path / "data"
    if windowed:  # several row groups: the loader reads the footer and the request ids before a window
        monkeypatch.setattr("cascade_ranking.data.store.ROW_GROUP_REQUESTS", 4)
    make_tiny_dataset(data)
    monkeypatch.setattr("cascade_ranking.data.store.pq.read_table", _permission_denied)
    monkeypatch.setattr("cascade_ranking.data.store.pq.ParquetFile", _permission_denied)
    monkeypatch.setattr("pyarrow.parquet.read_table", _permission_denied)
    args = ["--set", "shuffle_window=8"] if windowed else []
    # the first file read is named: the test partitions' labels are checked (footers) before training starts
    assert_clean_error(train_cli(data, tmp_path / "run", *args), ".parquet", "Permission denied")
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------------
# disk full on write
# ------------------------------------------------------------------------------------------------------
def _enospc_after_partial_write(real):
    """A writer that writes a few bytes to the target, then fails as a full disk does."""

    def write(obj, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_disk_full_writing_a_partition_leaves_no_partial_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    schema = make_tiny_dataset(data)
    part = schema.partitions[0]
    arrays = read_partition(data, schema, part)
    before = (data / part.file_name).read_bytes()
    monkeypatch.setattr("cascade_ranking.data.store.pq.write_table", _enospc_after_partial_write(pq.write_table))
    with pytest.raises(OSError) as info:
        write_partition(data, schema, part, arrays)
    assert info.value.errno == errno.ENOSPC
    assert (data / part.file_name).read_bytes() == before  # the old file is intact
    assert leftovers(data) == []


def test_disk_full_during_prepare_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("cascade_ranking.data.store.pq.write_table", _enospc_after_partial_write(pq.write_table))
    out = tmp_path / "synth"
    result = cli("prepare", "synthetic", out, "--requests", "40", "--days", "2")
    assert not out.exists() and leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert_clean_error(result, "No space left on device")


def test_disk_full_during_checkpoint_is_a_clear_error(tmp_path, monkeypatch, tiny_dataset):
    def save(obj, where, *args, **kwargs):
        Path(where).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cascade_ranking.training.loop.torch.save", save)
    out = tmp_path / "run"
    result = train_cli(tiny_dataset, out)
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists() and leftovers(out) == []
    assert_clean_error(result, "No space left on device")


# ------------------------------------------------------------------------------------------------------
# RecFlow files (simulated, then broken)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recflow_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recflow") / "raw"
    simulate(out, requests=60, days=2, layout="recflow", seed=3, config=small_config())
    return out


def _first_day(raw: Path) -> str:
    return sorted(p.stem for p in (raw / "all_stage").glob("*.feather"))[0]


def _edit_feather(path: Path, name: str, update) -> None:
    table = feather.read_table(path)
    i = table.column_names.index(name)
    feather.write_feather(table.set_column(i, name, update(table.column(name))), path)


def _edit_pickle(path: Path, update) -> None:
    with path.open("rb") as fh:
        obj = pickle.load(fh)
    obj = update(obj)
    with path.open("wb") as fh:
        pickle.dump(obj, fh)


def _first_request_flow(flow: str, change):
    def update(d):
        rid = next(iter(d))
        d[rid][flow] = change(d[rid][flow])
        return d

    return update


def _corrupt_recflow(raw: Path, case: str) -> None:
    day = _first_day(raw)
    fpath, rpath, hpath = (
        raw / "all_stage" / f"{day}.feather",
        raw / "request_id_dict" / f"{day}.pkl",
        raw / "seq_effective_50_dict" / f"{day}.pkl",
    )
    if case == "feather-request-id-strings":
        _edit_feather(fpath, "request_id", lambda c: pa.array([f"req-{x}" for x in c.to_pylist()]))
    elif case == "feather-user-id-floats":
        _edit_feather(fpath, "user_id", lambda c: pa.array(np.asarray(c.to_pylist(), dtype=np.float64) + 0.5))
    elif case == "feather-user-id-beyond-id-cnt":
        _edit_feather(fpath, "user_id", lambda c: pa.array(np.asarray(c.to_pylist()) + 10**9))
    elif case == "feather-rank-index-inf":
        _edit_feather(fpath, "rank_index", lambda c: pa.array(np.full(len(c), np.inf)))
    elif case == "feather-timestamp-null":
        _edit_feather(fpath, "request_timestamp", lambda c: pa.array([None] * len(c), pa.int64()))
    elif case == "pickle-truncated":
        data = rpath.read_bytes()
        rpath.write_bytes(data[: len(data) // 2])
    elif case == "pickle-not-a-dict":
        _edit_pickle(rpath, lambda d: list(d.items()))
    elif case == "flow-floats":
        _edit_pickle(rpath, _first_request_flow("rank_neg", lambda a: a.astype(np.float64) + 0.5))
    elif case == "flow-nan":
        _edit_pickle(rpath, _first_request_flow("rank_neg", lambda a: np.full(a.shape, np.nan)))
    elif case == "flow-not-an-array":
        _edit_pickle(rpath, _first_request_flow("coarse_neg", lambda a: "video list"))
    elif case == "history-strings":
        _edit_pickle(hpath, lambda d: {k: v.astype(str) for k, v in d.items()})
    elif case == "id-cnt-string-count":
        _edit_pickle(raw / "others" / "id_cnt.pkl", lambda d: {**d, "user_id": "many"})
    elif case == "id-cnt-zero":
        _edit_pickle(raw / "others" / "id_cnt.pkl", lambda d: {**d, "author_id": 0})
    elif case == "id-cnt-truncated":
        (raw / "others" / "id_cnt.pkl").write_bytes(b"\x80\x04\x95")
    else:  # pragma: no cover
        raise AssertionError(case)


RECFLOW_CASES = [
    pytest.param(
        "feather-request-id-strings", [".feather", "'request_id'", "integer"], id="feather-request-id-strings"
    ),
    pytest.param("feather-user-id-floats", [".feather", "'user_id'"], id="feather-user-id-floats"),
    pytest.param("feather-user-id-beyond-id-cnt", [".feather", "'user_id'", "id_cnt"], id="feather-user-beyond-vocab"),
    pytest.param(
        "feather-rank-index-inf",
        [".feather", "rank_index"],
        id="feather-rank-index-inf",
    ),
    pytest.param("feather-timestamp-null", [".feather", "'request_timestamp'", "null"], id="feather-timestamp-null"),
    pytest.param("pickle-truncated", ["request_id_dict", "not a readable pickle"], id="pickle-truncated"),
    pytest.param("pickle-not-a-dict", ["request_id_dict", "expected a dict"], id="pickle-not-a-dict"),
    pytest.param("flow-floats", ["request_id_dict", "'rank_neg'", "expected integers"], id="flow-floats"),
    pytest.param("flow-nan", ["request_id_dict", "'rank_neg'", "expected integers"], id="flow-nan"),
    pytest.param("flow-not-an-array", ["request_id_dict", "'coarse_neg'"], id="flow-not-an-array"),
    pytest.param("history-strings", ["seq_effective_50_dict", "history"], id="history-strings"),
    pytest.param("id-cnt-string-count", ["id_cnt.pkl", "'user_id'", "positive integer"], id="id-cnt-string-count"),
    pytest.param("id-cnt-zero", ["id_cnt.pkl", "'author_id'", "positive integer"], id="id-cnt-zero"),
    pytest.param("id-cnt-truncated", ["id_cnt.pkl", "not a readable pickle"], id="id-cnt-truncated"),
]


@pytest.mark.parametrize(("case", "needles"), RECFLOW_CASES)
def test_malformed_recflow_files(recflow_raw, tmp_path, case, needles):
    raw = tmp_path / "raw"
    shutil.copytree(recflow_raw, raw)
    _corrupt_recflow(raw, case)
    out = tmp_path / "data"
    with pytest.raises(RecFlowFormatError) as info:
        convert_recflow(raw, out, stages=2)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not out.exists() and leftovers(tmp_path) == []
    # and through the command line: the same message on one line, exit code 2
    assert_clean_error(cli("prepare", "recflow", raw, out), *needles)


def test_recflow_nan_rank_index_gets_the_release_default_with_a_warning(recflow_raw, tmp_path, caplog):
    """A NaN rank_index is treated as no rank row: rank index 500, label 30 - 500 = -470 (as the release), warned."""
    raw = tmp_path / "raw"
    shutil.copytree(recflow_raw, raw)
    day = _first_day(raw)
    _edit_feather(raw / "all_stage" / f"{day}.feather", "rank_index", lambda c: pa.array(np.full(len(c), np.nan)))
    with caplog.at_level(logging.WARNING, logger="cascade_ranking.datasets.recflow"):
        schema = convert_recflow(raw, tmp_path / "data", stages=2)
    assert any("rank index 500" in r.getMessage() for r in caplog.records)
    arrays = read_partition(tmp_path / "data", schema, schema.partitions[0])
    top = arrays["mask"] & (arrays["stage"] == 3)
    assert top.any() and np.all(arrays["label"][top] == -470.0)
    assert np.isfinite(arrays["label"]).all()


def test_recflow_empty_day_converts_to_an_empty_partition(recflow_raw, tmp_path):
    """A day whose feather file has no rows becomes a partition of 0 requests; the others convert as usual."""
    raw = tmp_path / "raw"
    shutil.copytree(recflow_raw, raw)
    day = _first_day(raw)
    path = raw / "all_stage" / f"{day}.feather"
    feather.write_feather(feather.read_table(path).slice(0, 0), path)
    schema = convert_recflow(raw, tmp_path / "data", stages=2)
    assert [p.num_requests for p in schema.partitions][0] == 0 and schema.partitions[1].num_requests > 0
    arrays = read_partition(tmp_path / "data", schema, schema.partitions[0])
    assert arrays["mask"].shape == (0, 40)


# ------------------------------------------------------------------------------------------------------
# RecBole / GroupLens copies of MovieLens (a few hundred lines of the test copy, then broken)
# ------------------------------------------------------------------------------------------------------
LINES = 300


@pytest.fixture
def recbole_copy(ml100k_src, tmp_path) -> Path:
    d = tmp_path / "ml"
    d.mkdir()
    for ext in ("inter", "user", "item"):
        with (ml100k_src / f"ml-100k.{ext}").open(encoding="latin-1") as fh:
            head = [next(fh) for _ in range(LINES + 1)]
        (d / f"ml-100k.{ext}").write_text("".join(head), encoding="latin-1")
    return d


def _grouplens_from(recbole: Path, d: Path) -> Path:
    """A GroupLens-layout copy of the RecBole head (u.data, u.user, u.item; genre flags from ``class``)."""
    from cascade_ranking.datasets.movielens import GENRES

    d.mkdir()

    def rows(ext):
        lines = (recbole / f"ml-100k.{ext}").read_text(encoding="latin-1").splitlines()[1:]
        return [line.split("\t") for line in lines]

    (d / "u.data").write_text("".join("\t".join(r) + "\n" for r in rows("inter")))
    (d / "u.user").write_text("".join("|".join(r) + "\n" for r in rows("user")))
    items = []
    for item_id, title, year, cls in rows("item"):
        flags = "|".join(str(int(g in cls.split(" "))) for g in GENRES)
        items.append(f"{item_id}|{title}|01-Jan-{year}||http://example.invalid/|{flags}\n")
    (d / "u.item").write_text("".join(items), encoding="latin-1")
    return d


def _replace_line(path: Path, index: int, make) -> None:
    lines = path.read_text(encoding="latin-1").splitlines(keepends=True)
    lines[index] = make(lines[index].rstrip("\n").split("\t" if path.suffix != ".data" else "\t"))
    path.write_text("".join(lines), encoding="latin-1")


def _corrupt_movielens(d: Path, case: str) -> Path:
    inter, user, item = (d / f"ml-100k.{e}" for e in ("inter", "user", "item"))
    if case == "inter-rating-nan":
        _replace_line(inter, 5, lambda f: f"{f[0]}\t{f[1]}\tnan\t{f[3]}\n")
    elif case == "inter-timestamp-inf":
        _replace_line(inter, 7, lambda f: f"{f[0]}\t{f[1]}\t{f[2]}\tinf\n")
    elif case == "inter-truncated":
        text = inter.read_text()
        inter.write_text(text[: text.rindex("\t") - 2])  # cut inside the last line
    elif case == "inter-rating-word":
        _replace_line(inter, 9, lambda f: f"{f[0]}\t{f[1]}\tfive\t{f[3]}\n")
    elif case == "user-age-word":
        _replace_line(user, 3, lambda f: "\t".join([f[0], "twenty", *f[2:]]) + "\n")
    elif case == "user-duplicate-id":
        _replace_line(user, 4, lambda f: "\t".join(["1", *f[1:]]) + "\n")
    elif case == "item-duplicate-id":
        _replace_line(item, 6, lambda f: "\t".join(["2", *f[1:]]) + "\n")
    elif case == "item-unknown-genre":
        _replace_line(item, 2, lambda f: "\t".join([*f[:3], "Cyberpunk"]) + "\n")
    elif case == "inter-missing-column":
        lines = [line.rsplit("\t", 1)[0] for line in inter.read_text().splitlines()]
        inter.write_text("\n".join(lines) + "\n")
    elif case == "grouplens-comma-separated":
        g = _grouplens_from(d, d.parent / "gl")
        g_data = g / "u.data"
        g_data.write_text(g_data.read_text().replace("\t", ","))
        return g
    elif case == "grouplens-genre-flag-word":
        g = _grouplens_from(d, d.parent / "gl")
        lines = (g / "u.item").read_text(encoding="latin-1").splitlines(keepends=True)
        fields = lines[3].split("|")
        fields[7] = "yes"
        lines[3] = "|".join(fields)
        (g / "u.item").write_text("".join(lines), encoding="latin-1")
        return g
    elif case == "grouplens-item-duplicate-id":
        g = _grouplens_from(d, d.parent / "gl")
        lines = (g / "u.item").read_text(encoding="latin-1").splitlines(keepends=True)
        lines[5] = "|".join(["3", *lines[5].split("|")[1:]])
        (g / "u.item").write_text("".join(lines), encoding="latin-1")
        return g
    elif case == "grouplens-age-negative-float":
        g = _grouplens_from(d, d.parent / "gl")
        lines = (g / "u.user").read_text().splitlines(keepends=True)
        fields = lines[2].split("|")
        fields[1] = "-3.5"
        lines[2] = "|".join(fields)
        (g / "u.user").write_text("".join(lines))
        return g
    else:  # pragma: no cover
        raise AssertionError(case)
    return d


MOVIELENS_CASES = [
    pytest.param("inter-rating-nan", ["ml-100k.inter", "'rating'", "non-finite"], id="inter-rating-nan"),
    pytest.param("inter-timestamp-inf", ["ml-100k.inter", "'timestamp'", "non-finite"], id="inter-timestamp-inf"),
    pytest.param("inter-truncated", ["ml-100k.inter"], id="inter-truncated"),
    pytest.param("inter-rating-word", ["ml-100k.inter", "'rating'"], id="inter-rating-word"),
    pytest.param("inter-missing-column", ["ml-100k.inter", "'timestamp'"], id="inter-missing-column"),
    pytest.param("user-age-word", ["ml-100k.user", "'age'"], id="user-age-word"),
    pytest.param(
        "user-duplicate-id",
        ["ml-100k.user", "'user_id'", "duplicate", "'1'"],
        id="user-duplicate-id",
    ),
    pytest.param(
        "item-duplicate-id",
        ["ml-100k.item", "'item_id'", "duplicate", "'2'"],
        id="item-duplicate-id",
    ),
    pytest.param("item-unknown-genre", ["'Cyberpunk'", "genre"], id="item-unknown-genre"),
    pytest.param("grouplens-comma-separated", ["u.data"], id="grouplens-comma-separated"),
    pytest.param("grouplens-genre-flag-word", ["u.item", "'genre_"], id="grouplens-genre-flag-word"),
    pytest.param("grouplens-age-negative-float", ["u.user", "'age'"], id="grouplens-age-float"),
    pytest.param(
        "grouplens-item-duplicate-id", ["u.item", "'item_id'", "duplicate", "'3'"], id="grouplens-item-duplicate-id"
    ),
]


@pytest.mark.parametrize(("case", "needles"), MOVIELENS_CASES)
def test_malformed_movielens_copies(recbole_copy, tmp_path, case, needles):
    src = _corrupt_movielens(recbole_copy, case)
    tables = None
    with pytest.raises(DataFormatError) as info:
        tables = read_movielens(src)
        movielens_log(tables)
    at_read = tables is None
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    out = tmp_path / "out"
    result = cli("prepare", "movielens-100k", "--src", src, "--out", out)
    # errors found while reading come first; encoding errors come after the content check (300 != 100,000 ratings)
    assert_clean_error(result, *(needles if at_read else ["not MovieLens-100K"]))
    assert not out.exists()


def test_movielens_head_is_rejected_as_not_ml100k_on_the_command_line(recbole_copy, tmp_path):
    """An intact but partial copy (300 ratings) reads fine and is refused by the content check, before writing."""
    tables = read_movielens(recbole_copy)
    assert tables.ratings.num_rows == LINES
    out = tmp_path / "out"
    assert_clean_error(
        cli("prepare", "movielens-100k", "--src", recbole_copy, "--out", out), "not MovieLens-100K", f"{LINES} in"
    )
    assert not out.exists()


@ROOT_SKIP
def test_unreadable_movielens_folder(recbole_copy, tmp_path):  # pragma: no cover - skipped as root
    recbole_copy.chmod(0)
    try:
        assert_clean_error(cli("prepare", "movielens-100k", "--src", recbole_copy, "--out", tmp_path / "o"), "ml")
    finally:
        recbole_copy.chmod(0o755)

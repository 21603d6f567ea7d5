"""Faults and mistakes, tried as a user would (issue 17): re-running with other options, sharing run folders,
killing processes (``kill -9`` at random moments), editing files, hostile config files.

Each class has one root fix; these tests check it from outside. Every case asserts a clear error (naming the
option, file, column or folder), or a correct result checked by value; never a traceback, never a mixed or
half-written run folder, never a result of another configuration reported as this one's.

==========================  ==================================================================================
class                       root fix
==========================  ==================================================================================
benchmark reuse             ``training.fingerprint.run_fingerprint`` checked by ``experiments.runner.run_or_reuse``
run folders                 ``training.runfolder.claim_run_folder`` (flock + pid, ``--overwrite``, cleanup)
resume / evaluate           ``cli._resume_options``, absolute ``config.data``, ``check_keep`` in ``load_run``
values                      ``data.store._check_narrowing``, ``check_labels``, ``data.atomic.strict_json``
tracebacks                  ``model_memory_errors``, ``checkpoint_mismatch``, report ``_checked_row``
misleading                  option ranges in ``cli``, short temporary names, RecFlow history length by majority
config parsing              ``training.config.safe_yaml`` (no aliases) and ``MAX_CONFIG_BYTES``
leftovers                   ``data.atomic.remove_stale_temporaries`` (temporaries of dead pids)
==========================  ==================================================================================
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import cascade_ranking
from cascade_ranking.data.atomic import strict_json, temp_prefix
from cascade_ranking.data.store import StoreError, dataset_fingerprint, open_dataset, read_partition
from cascade_ranking.experiments import runner
from cascade_ranking.experiments.report import write_report
from cascade_ranking.experiments.results import plot_primary, summarize
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.runfolder import LOCK_FILE, RunFolderError, claim_run_folder
from conftest import make_tiny_dataset
from test_bad_inputs import _rewrite_partition, assert_clean_error, cli, column, fixed, leftovers, set_column, train_cli

SRC = Path(__file__).resolve().parents[1] / "src"


def strict_load(path: Path):
    """JSON as RFC 8259 allows it: ``NaN``/``Infinity`` are an error."""

    def refuse(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def run_cli(*args, cwd: Path | None = None, wait: bool = True, **kwargs):
    """The command as a user runs it: a separate process (``python -m cascade_ranking``)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "cascade_ranking", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    out = {"a": root / "tiny-a", "b": root / "tiny-b"}
    make_tiny_dataset(out["a"])
    make_tiny_dataset(out["b"], seed=1)
    return out


@pytest.fixture(scope="module")
def finished_run(datasets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_cli(datasets["a"], out, "--method", "bce").exit_code == 0
    return out


# ------------------------------------------------------------------------------------------------------
# 1. benchmark reuse is keyed on the run fingerprint
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def counted_train(monkeypatch):
    calls = []
    real = runner.train

    def train(config, **kwargs):
        calls.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(runner, "train", train)
    return calls


@pytest.mark.parametrize(
    ("change", "component"),
    [
        ("passes", "configuration"),
        ("emb_dim", "configuration"),
        ("data", "dataset"),
        ("package", "package version"),
    ],
)
def test_benchmark_reuses_a_run_only_for_the_same_fingerprint(
    datasets, tmp_path, counted_train, monkeypatch, caplog, change, component
):
    base = TrainConfig(method="bce", device="cpu")
    run_dir = tmp_path / "runs" / "bce-seed0"
    first = runner.run_or_reuse(base, datasets["a"], run_dir)
    again = runner.run_or_reuse(base, datasets["a"], run_dir)
    assert len(counted_train) == 1 and again == first  # same fingerprint: reused

    config, data = base, datasets["a"]
    if change == "passes":
        config = base.model_copy(update={"passes": 2})
    elif change == "emb_dim":
        config = base.model_copy(update={"emb_dim": 4})
    elif change == "data":
        data = datasets["b"]
    else:
        monkeypatch.setattr(cascade_ranking, "__version__", "999.0")
    with caplog.at_level(logging.WARNING):
        new = runner.run_or_reuse(config, data, run_dir)
    assert len(counted_train) == 2, f"{change}: an old run was reused"
    assert component in caplog.text and str(run_dir) in caplog.text
    saved = strict_load(run_dir / "metrics.json")
    assert saved["fingerprint"] == new["fingerprint"] != first["fingerprint"]
    if change == "passes":
        assert new["steps"] == 2 * first["steps"]
    if change == "emb_dim":
        assert json.loads((run_dir / "config.json").read_text())["emb_dim"] == 4
    if change == "data":
        assert new["test"] != first["test"]
    # and the new run is reused in turn
    runner.run_or_reuse(config, data, run_dir)
    assert len(counted_train) == 2


def test_options_that_do_not_change_results_keep_the_fingerprint(datasets, tmp_path, counted_train):
    base = TrainConfig(method="bce", device="cpu")
    runner.run_or_reuse(base, datasets["a"], tmp_path / "r")
    moved = tmp_path / "moved-copy"
    shutil.copytree(datasets["a"], moved)  # the same dataset elsewhere: identified by its contents
    runner.run_or_reuse(base.model_copy(update={"threads": 1, "checkpoint_every": 3}), moved, tmp_path / "r")
    assert len(counted_train) == 1


def test_dataset_fingerprint_follows_contents_not_location(datasets, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(datasets["a"], copy)
    assert dataset_fingerprint(copy) == dataset_fingerprint(datasets["a"])
    assert dataset_fingerprint(datasets["b"]) != dataset_fingerprint(datasets["a"])
    labels = column(copy / "part-00.parquet", "label")
    labels[0, 0] += 1.0  # one value edited by another tool
    set_column(copy / "part-00.parquet", "label", fixed(labels, pa.float32()))
    assert dataset_fingerprint(copy)["content_sha256"] != dataset_fingerprint(datasets["a"])["content_sha256"]


def test_benchmark_cli_rerun_with_other_passes_reports_the_new_runs(datasets, tmp_path):
    out = tmp_path / "bench"
    args = ("benchmark", "--data", datasets["a"], "--methods", "bce", "--repeats", "1", "--device", "cpu", "--out", out)
    assert cli(*args).exit_code == 0
    steps1 = json.loads((out / "runs" / "bce-seed0" / "metrics.json").read_text())["steps"]
    result = cli(*args, "--passes", "2")
    assert result.exit_code == 0, result.output
    steps2 = strict_load(out / "runs" / "bce-seed0" / "metrics.json")["steps"]
    assert steps2 == 2 * steps1
    results = strict_load(out / "results.json")
    assert results["runs"][0]["train_seconds"] == strict_load(out / "runs/bce-seed0/metrics.json")["train_seconds"]


# ------------------------------------------------------------------------------------------------------
# 2. run folders: one owner, an explicit choice to replace, consistent at every instant
# ------------------------------------------------------------------------------------------------------
def _same_run(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (config["method"], config["seed"]) == (metrics["method"], metrics["seed"]), "a run folder mixes two runs"


def test_two_concurrent_trains_cannot_both_write_one_folder(datasets, tmp_path):
    out = tmp_path / "shared"
    procs = [
        run_cli("train", "--data", datasets["a"], "--device", "cpu", "--out", out, "--seed", seed, "--passes", 3,
                wait=False)
        for seed in (1, 2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = outputs[[p.returncode for p in procs].index(2)]
    assert str(out) in loser and ("in use by process" in loser or "--overwrite" in loser), loser
    assert "Traceback" not in loser
    _same_run(out)
    assert leftovers(out) == []


def test_train_into_a_finished_run_needs_overwrite(finished_run, datasets):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file() and p.name != LOCK_FILE}
    result = train_cli(datasets["a"], finished_run, "--method", "lcron")
    assert_clean_error(result, str(finished_run), "--overwrite")
    after = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file() and p.name != LOCK_FILE}
    assert after == before


def test_a_killed_overwrite_never_leaves_two_runs_mixed(datasets, tmp_path):
    out = tmp_path / "run"
    assert train_cli(datasets["a"], out, "--method", "bce").exit_code == 0
    proc = run_cli("train", "--data", datasets["a"], "--device", "cpu", "--out", out, "--overwrite", "--method",
                   "lcron", "--passes", 50, "--checkpoint-every", 1, wait=False)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() or json.loads((out / "config.json").read_text())["method"] != "lcron":
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        if (out / "metrics.json").exists():
            _same_run(out)  # never the new config beside the old metrics
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()  # the old run was replaced (asked for); the new one is unfinished
    result = train_cli(datasets["a"], out, "--method", "bce")  # no silent reuse of an unfinished folder either
    assert_clean_error(result, "--overwrite")
    resumed = cli("train", "--resume", out)
    assert resumed.exit_code == 0, resumed.output
    _same_run(out)


def test_a_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    pid = dead_pid()
    (run / LOCK_FILE).write_text(f"{pid}\n")
    with caplog.at_level(logging.WARNING), claim_run_folder(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert f"process {pid}" in caplog.text and "no longer running" in caplog.text


def test_a_live_owner_blocks_a_second_writer(tmp_path, datasets):
    run = tmp_path / "run"
    with claim_run_folder(run):
        result = train_cli(datasets["a"], run)
        assert_clean_error(result, str(run), f"in use by process {os.getpid()}")
        with pytest.raises(RunFolderError, match="in use"):
            with claim_run_folder(run, resume=True):
                pass
    with claim_run_folder(run):  # released
        pass


def test_a_file_as_run_folder_is_a_clear_error(tmp_path, datasets):
    path = tmp_path / "file"
    path.write_text("x")
    assert_clean_error(train_cli(datasets["a"], path), str(path), "not a folder")


# ------------------------------------------------------------------------------------------------------
# 3. resume and evaluate
# ------------------------------------------------------------------------------------------------------
def test_resume_rejects_options_it_would_ignore_by_name(finished_run):
    result = cli("train", "--resume", finished_run, "--passes", "3", "--method", "bce", "--lr", "0.5")
    assert_clean_error(result, "--passes", "--method", "--lr", "--resume")
    result = cli("train", "--resume", finished_run, "--set", "emb_dim=4", "--out", "x")
    assert_clean_error(result, "--set", "--out")


def test_evaluate_from_another_directory(datasets, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(datasets["a"], work / "data")
    monkeypatch.chdir(work)
    trained = cli("train", "--data", "data", "--device", "cpu", "--out", "run")  # a path relative to the cwd
    assert trained.exit_code == 0, trained.output
    assert Path(json.loads((work / "run" / "config.json").read_text())["data"]).is_absolute()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = cli("evaluate", work / "run")
    assert result.exit_code == 0, result.output
    assert "joint_recall" in result.output


def test_evaluate_on_fewer_candidates_than_keep(finished_run, tmp_path):
    small = tmp_path / "small"
    make_tiny_dataset(small, num_candidates=6, keep=(4, 3), gt_num=2)
    result = cli("evaluate", finished_run, "--data", small)
    assert_clean_error(result, "keep", "N=6")


def _ok(args: list, **kw):
    result = run_cli(*args, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def uninterrupted(datasets, tmp_path_factory) -> tuple[list, dict]:
    args = ["--data", datasets["a"], "--device", "cpu", "--passes", 12, "--checkpoint-every", 2, "--threads", 1]
    out = tmp_path_factory.mktemp("whole") / "run"
    _ok(["train", *args, "--out", out])
    return args, strict_load(out / "metrics.json")


@pytest.mark.parametrize("trial", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_at_a_random_moment_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, trial):
    args, whole = uninterrupted
    out = tmp_path / "killed"
    proc = run_cli("train", *args, "--out", out, wait=False)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # training has started: kill at a random moment of it
    time.sleep(random.Random(trial).uniform(0.0, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "metrics.json").exists():
        resumed = strict_load(out / "metrics.json")  # finished before the kill
    elif (out / "checkpoint.pt").exists():
        _ok(["train", "--resume", out])
        resumed = strict_load(out / "metrics.json")
    else:  # killed before the first checkpoint: resuming says so; a new run needs --overwrite
        refused = run_cli("train", "--resume", out)
        assert refused.returncode == 2 and "missing" in refused.stderr and "Traceback" not in refused.stderr
        _ok(["train", *args, "--out", out, "--overwrite"])
        resumed = strict_load(out / "metrics.json")
    assert set(resumed) == set(whole)
    for key in ("test", "valid", "steps", "final_loss", "final_loss_parts", "loss_curve_every_10_steps"):
        assert resumed[key] == whole[key], key
    assert resumed["fingerprint"] == whole["fingerprint"]
    assert leftovers(out) == []


def test_resume_with_a_checkpoint_of_another_method_or_stage_count(datasets, tmp_path):
    three = tmp_path / "three"
    make_tiny_dataset(three, keep=(8, 6, 4), seed=0)
    runs = {}
    for name, data, method in (
        ("bce2", datasets["a"], "bce"),
        ("lcron2", datasets["a"], "lcron"),
        ("bce3", three, "bce"),
    ):
        runs[name] = tmp_path / name
        assert train_cli(data, runs[name], "--method", method).exit_code == 0
    for other in ("lcron2", "bce3"):
        target = tmp_path / f"mixed-{other}"
        shutil.copytree(runs["bce2"], target)
        shutil.copy(runs[other] / "checkpoint.pt", target / "checkpoint.pt")
        assert_clean_error(cli("train", "--resume", target), "checkpoint.pt", "cannot resume")
        state = torch.load(target / "checkpoint.pt", weights_only=True)
        del state["fingerprint"]  # a checkpoint of an older release: the states themselves do not fit
        torch.save(state, target / "checkpoint.pt")
        assert_clean_error(cli("train", "--resume", target), "checkpoint.pt", "does not fit")


# ------------------------------------------------------------------------------------------------------
# 4. values that wrap or become NaN
# ------------------------------------------------------------------------------------------------------
def _copy(datasets, tmp_path) -> Path:
    d = tmp_path / "d"
    shutil.copytree(datasets["a"], d)
    return d


@pytest.mark.parametrize(
    ("col", "typ", "value", "needles"),
    [
        ("stage", pa.int16(), 258, ["'stage'", "int16", "258", "int8"]),
        ("stage", pa.int64(), -129, ["'stage'", "-129"]),
        ("mask", pa.int8(), 2, ["'mask'", "[0, 1]"]),
        ("item.item_id", pa.uint64(), 2**63 + 5, ["'item.item_id'", "uint64"]),
    ],
)
def test_integers_are_range_checked_before_narrowing(datasets, tmp_path, col, typ, value, needles):
    d = _copy(datasets, tmp_path)
    path = d / "part-00.parquet"
    values = column(path, col).astype(np.float64 if typ == pa.uint64() else np.int64)
    values = values.astype(object)
    values[0, 0] = value
    set_column(path, col, fixed(np.array(values.tolist(), dtype=typ.to_pandas_dtype()), typ))
    schema = open_dataset(d)
    with pytest.raises(StoreError) as info:
        read_partition(d, schema, schema.partitions[0])
    for needle in needles + [str(path)]:
        assert needle in str(info.value)


def test_negative_labels_in_the_test_partition_fail_before_training(datasets, tmp_path, monkeypatch):
    d = _copy(datasets, tmp_path)
    path = d / "part-02.parquet"
    labels, mask = column(path, "label"), column(path, "mask")
    labels[mask] = -labels[mask] - 1
    set_column(path, "label", fixed(labels, pa.float32()))

    def no_training(*a, **k):
        raise AssertionError("trained before the bad labels were reported")

    monkeypatch.setattr("cascade_ranking.training.loop._Run.train_all", no_training)
    assert_clean_error(train_cli(d, tmp_path / "run"), str(path), "'label'", "negative")


def test_all_candidates_masked_writes_strict_json(datasets, tmp_path):
    d = _copy(datasets, tmp_path)
    path = d / "part-02.parquet"
    mask = column(path, "mask")
    set_column(path, "mask", fixed(np.zeros_like(mask), pa.bool_()))
    result = train_cli(d, tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = strict_load(tmp_path / "run" / "metrics.json")
    assert all(v is None or np.isfinite(v) for v in metrics["test"].values())


def test_strict_json_writes_null_for_non_finite_and_names_the_keys(caplog):
    with caplog.at_level(logging.WARNING):
        text = strict_json({"a": {"b": float("nan")}, "c": [1.0, float("inf")]}, what="x.json")
    assert json.loads(text) == {"a": {"b": None}, "c": [1.0, None]}
    assert "a.b" in caplog.text and "c[1]" in caplog.text


def test_reference_on_an_empty_test_partition(tmp_path):
    d = tmp_path / "d"
    make_tiny_dataset(d)
    _rewrite_partition(d, "part-02", lambda a: {k: v[:0] for k, v in a.items()})
    assert_clean_error(cli("reference", "--data", d), "part-02", "no request to evaluate")


def test_nan_in_a_benchmark_summary_never_crashes_the_chart_or_report(tmp_path, caplog):
    runs = [
        {"row": "bce", "seed": 0, "joint_recall": float("nan")},
        {"row": "lcron", "seed": 0, "joint_recall": 0.5},
    ]
    summary = summarize(runs)
    plot_primary(tmp_path / "chart.png", summary, "t")
    assert (tmp_path / "chart.png").stat().st_size > 0
    results = {"summary": summary, "runs": runs, "repeats": 1}
    (tmp_path / "results.json").write_text(strict_json(results))
    with caplog.at_level(logging.WARNING):
        write_report([tmp_path], tmp_path / "report.html")
    assert "bce" in caplog.text and "left out of the chart" in caplog.text


# ------------------------------------------------------------------------------------------------------
# 5. tracebacks -> one-line errors
# ------------------------------------------------------------------------------------------------------
def test_models_too_large_to_allocate(datasets, tmp_path):
    result = train_cli(datasets["a"], tmp_path / "run", "--set", f"emb_dim={10**13}")
    assert_clean_error(result, "emb_dim", "cannot allocate")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda r: r["summary"]["bce"]["joint_recall"].update(mean="high"), ["'mean'", "str"]),
        (lambda r: r["summary"]["bce"]["joint_recall"].update(values=3), ["'values'", "list"]),
        (lambda r: r["summary"]["bce"]["joint_recall"].update(std=[1]), ["'std'"]),
    ],
)
def test_report_on_results_with_wrong_types(tmp_path, edit, needles):
    results = {"summary": summarize([{"row": "bce", "seed": 0, "joint_recall": 0.3}]), "runs": [], "repeats": 1}
    edit(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert_clean_error(cli("report", tmp_path, "--out", tmp_path / "r.html"), "results.json", *needles)


def test_report_on_metrics_with_wrong_types(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["loss_curve_every_10_steps"] = "falling"
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert_clean_error(cli("report", run, "--out", tmp_path / "r.html"), "metrics.json", "loss_curve")


def test_disk_full_while_torch_writes_a_checkpoint_keeps_the_previous_one(datasets, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = torch.save
    calls = []

    def save(obj, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 2:  # the second checkpoint: torch reports ENOSPC as a RuntimeError
            Path(where).write_bytes(b"partial")
            raise RuntimeError(f"[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file: "
                               f"{os.strerror(errno.ENOSPC)}")  # fmt: skip
        return real(obj, where, *args, **kwargs)

    monkeypatch.setattr("cascade_ranking.training.checkpoint.torch.save", save)
    result = train_cli(datasets["a"], out, "--checkpoint-every", "1")
    assert_clean_error(result, "checkpoint.pt", "No space left on device")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["position"]["step"] == 1
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------------------
# 6. misleading errors
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--seed", "-1"], ["seed", "greater than or equal to 0"]),
        (["train", "--threads", str(10**20)], ["threads", "less than or equal to 4096"]),
        (["benchmark", "--threads", str(10**20)], ["threads"]),
        (["benchmark", "--repeats", "0"], ["repeats", "greater than 0"]),
        (["reference", "--seed", "-3"], ["--seed=-3"]),
        (["prepare", "synthetic", "OUT", "--requests", str(10**20)], ["--requests="]),
        (["prepare", "synthetic", "OUT", "--seed", "-1"], ["--seed=-1"]),
        (["prepare", "movielens-100k", "--out", "OUT", "--seed", "-2"], ["--seed=-2"]),
    ],
)
def test_numeric_options_are_checked_by_name(args, needles, tmp_path):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    assert_clean_error(cli(*args), *needles)
    assert not (tmp_path / "o").exists()


def test_seed_out_of_range_in_a_config_file_names_the_field(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("seed = -1\n")
    assert_clean_error(cli("train", "--config", cfg), "seed")


def test_a_250_character_output_name_works(datasets, tmp_path):
    out = tmp_path / ("r" * 250)
    result = train_cli(datasets["a"], out)
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file() and len(temp_prefix("x" * 250)) < 120


def test_a_recflow_request_with_an_empty_history_is_blamed_on_itself(tmp_path):
    import pickle

    from cascade_ranking.datasets.recflow import RecFlowFormatError, convert_recflow
    from cascade_ranking.datasets.synthetic import simulate, small_config

    raw = tmp_path / "raw"
    simulate(raw, requests=40, days=3, layout="recflow", seed=0, config=small_config())
    hist = sorted((raw / "seq_effective_50_dict").glob("*.pkl"))[0]
    table = pickle.loads(hist.read_bytes())
    first = next(iter(table))
    table[first] = table[first][:0]
    hist.write_bytes(pickle.dumps(table))
    with pytest.raises(RecFlowFormatError) as info:
        convert_recflow(raw, tmp_path / "out")
    assert f"request {first}:" in str(info.value) and "(0, " in str(info.value)


# ------------------------------------------------------------------------------------------------------
# 7. config files from outside are parsed with limits
# ------------------------------------------------------------------------------------------------------
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def test_billion_laughs_returns_at_once(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BILLION_LAUGHS)
    t0 = time.perf_counter()
    result = cli("train", "--config", cfg)
    assert time.perf_counter() - t0 < 10
    assert_clean_error(result, str(cfg), "aliases", "line 2")
    assert_clean_error(cli("train", "--set", "keep=[*a]"), "--set", "aliases")


def test_a_config_file_too_large(tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("# " + "x" * (2 << 20) + "\nseed: 1\n")
    assert_clean_error(cli("train", "--config", cfg), str(cfg), "too large")


def test_a_binary_config_file(tmp_path):
    cfg = tmp_path / "bin.toml"
    cfg.write_bytes(b"\xff\xfe\x00seed")
    assert_clean_error(cli("train", "--config", cfg), str(cfg), "not a text file")


# ------------------------------------------------------------------------------------------------------
# 8. leftovers after kill -9
# ------------------------------------------------------------------------------------------------------
def test_temporaries_of_killed_writers_are_removed_by_the_next_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    pid = dead_pid()
    stale = [run / f".checkpoint.pt.{pid}.abcd1234.tmp", run / f".metrics.json.{pid}.zz__zz99.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    alive = run / f".checkpoint.pt.{os.getpid()}.live0000.tmp"  # a running writer's: left alone
    alive.write_bytes(b"writing")
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and alive.exists()


def test_staging_folders_of_a_killed_prepare_are_removed_by_the_next(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".data.{pid}.abcdefgh.tmp"
    (stale / "part").mkdir(parents=True)
    result = cli("prepare", "synthetic", tmp_path / "data", "--requests", "60", "--days", "3")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and leftovers(tmp_path) == []


def test_kill_9_during_prepare_then_prepare_again_leaves_nothing(tmp_path):
    out = tmp_path / "data"
    proc = run_cli("prepare", "synthetic", out, "--requests", "20000", "--days", "5", wait=False)
    time.sleep(random.uniform(1.5, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _ok(["prepare", "synthetic", out, "--requests", "600", "--days", "3"])
    assert leftovers(tmp_path) == [] and open_dataset(out).partitions

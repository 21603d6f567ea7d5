"""Checkpoint and resume: a training process killed with SIGKILL mid-partition resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import make_tiny_dataset

ARGS = ["--device", "cpu", "--batch-size", "8", "--passes", "2", "--checkpoint-every", "3", "--threads", "1"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cascade_ranking", "-q", "train", *args]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in sys.path if p])
    return env


def _weights(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["cascade"]


def test_kill_9_mid_partition_then_resume_gives_the_uninterrupted_result(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data, num_partitions=6, requests_per_partition=240)
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    proc = subprocess.Popen(
        _cli("--data", str(data), "--out", str(killed), *ARGS),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 120
    position = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            position = torch.load(ckpt, map_location="cpu", weights_only=True)["position"]
            if position["step"] >= 9 and position["batch"] > 0:  # mid-partition
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run(_cli("--resume", str(killed)), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = subprocess.run(
        _cli("--data", str(data), "--out", str(clean), *ARGS), env=_env(), capture_output=True, text=True
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((clean / "metrics.json").read_text())
    assert a["steps"] == b["steps"] and a["train_requests"] == b["train_requests"]
    assert a["test"] == b["test"] and a["valid"] == b["valid"]  # bitwise-equal floats
    assert a["final_loss"] == b["final_loss"]
    wa, wb = _weights(killed), _weights(clean)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.json: missing" in result.output

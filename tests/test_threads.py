"""The torch CPU thread policy: passive OpenMP wait set before torch loads, the default count, ``threads="auto"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.loop import train
from cascade_ranking.training.runfiles import LOSS_CURVE_KEY
from cascade_ranking.training.threads import (
    WAIT_POLICY_ENV,
    auto_candidates,
    choose_threads,
    passive_openmp_wait,
    resolve_threads,
    usable_cpus,
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_passive_wait_is_set_only_when_the_user_chose_none():
    env: dict[str, str] = {}
    assert passive_openmp_wait(env) and env == {WAIT_POLICY_ENV: "PASSIVE"}
    mine = {WAIT_POLICY_ENV: "ACTIVE"}
    assert not passive_openmp_wait(mine) and mine == {WAIT_POLICY_ENV: "ACTIVE"}


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_the_command_sets_passive_wait_before_torch_is_imported(user_value):
    """``cascade-ranking`` (cli.main) sets the policy before any torch import, and keeps the user's own."""
    env = {k: v for k, v in os.environ.items() if k != WAIT_POLICY_ENV}
    env["PYTHONPATH"] = str(SRC)
    if user_value:
        env[WAIT_POLICY_ENV] = user_value
    code = (
        "import os, sys, json; import cascade_ranking.cli as c; "
        "c.app = lambda: print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules])); c.main()"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [user_value or "PASSIVE", False]


def test_passive_wait_is_not_set_once_torch_is_loaded(monkeypatch):
    monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    assert "torch" in sys.modules
    assert not passive_openmp_wait() and WAIT_POLICY_ENV not in os.environ


def test_resolve_threads(keep_threads):
    torch.set_num_threads(1)
    assert resolve_threads(None) == 1 == torch.get_num_threads()  # never above torch's own count
    assert resolve_threads(2) == 2 == torch.get_num_threads()
    torch.set_num_threads(64)
    assert resolve_threads(None) == min(64, usable_cpus()) == torch.get_num_threads()  # capped at the affinity
    assert resolve_threads("auto") is None
    for bad in (0, -1, True, "two", 1.5):
        with pytest.raises(ValueError, match="threads="):
            resolve_threads(bad)  # type: ignore[arg-type]


def test_auto_candidates():
    assert auto_candidates(1) == [1]
    assert auto_candidates(2) == [1, 2]
    assert auto_candidates(16) == [1, 8, 16]
    assert auto_candidates() == sorted(set(auto_candidates()))


def test_choose_threads_keeps_the_fastest_and_breaks_ties_to_fewer(keep_threads):
    calls: list[int] = []

    def probe() -> None:  # slower the more threads: 1 thread must win
        calls.append(torch.get_num_threads())
        time.sleep(0.002 * torch.get_num_threads())

    best, medians = choose_threads(probe, [2, 1, 3], repeats=2)
    assert best == 1 == torch.get_num_threads()
    assert set(medians) == {1, 2, 3} and medians[1] < medians[2] < medians[3]
    assert calls == [2, 1, 3] * 3  # one warm-up round, then two timed rounds, interleaved
    best, _ = choose_threads(lambda: None, [3, 2], repeats=1)
    assert best in (2, 3)  # equal work: whichever timed faster, never a count outside the candidates


def test_choose_threads_restores_the_count_when_the_probe_fails(keep_threads):
    torch.set_num_threads(1)

    def probe() -> None:
        if torch.get_num_threads() == 2:
            raise RuntimeError("probe failed")

    with pytest.raises(RuntimeError, match="probe failed"):
        choose_threads(probe, [1, 2])
    assert torch.get_num_threads() == 1
    for bad in ([], [0], [1, -2]):
        with pytest.raises(ValueError, match="choose_threads"):
            choose_threads(lambda: None, bad)
    with pytest.raises(ValueError, match="repeats"):
        choose_threads(lambda: None, [1], repeats=0)


def test_config_accepts_auto_and_counts_only():
    assert TrainConfig(threads="auto").threads == "auto"
    assert TrainConfig(threads=3).threads == 3 and TrainConfig().threads is None
    for bad in (0, "many"):
        with pytest.raises(ValidationError, match="threads"):
            TrainConfig(threads=bad)


def test_auto_threads_leave_training_unchanged(tmp_path, tiny_dataset, keep_threads):
    """The timing probe (forward + backward of the first batch) changes no weight, gradient or RNG state:
    a run with ``threads="auto"`` equals a run with the count it chose, bitwise."""
    auto = train(
        TrainConfig(data=tiny_dataset, device="cpu", threads="auto"), data=tiny_dataset, run_dir=tmp_path / "a"
    )
    chosen = auto.metrics["threads"]
    assert chosen in auto_candidates()
    fixed = train(
        TrainConfig(data=tiny_dataset, device="cpu", threads=chosen), data=tiny_dataset, run_dir=tmp_path / "b"
    )
    assert auto.metrics[LOSS_CURVE_KEY] == fixed.metrics[LOSS_CURVE_KEY]
    assert auto.metrics["final_loss"] == fixed.metrics["final_loss"]
    assert auto.metrics["test"] == fixed.metrics["test"]

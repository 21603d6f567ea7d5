"""Data-parallel training under torchrun: 2 CPU processes (gloo) reproduce the 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from cascade_ranking.training.distributed import local_rows as _local_rows
from conftest import make_tiny_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in sys.path if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_local_rows_split_a_batch_without_loss_or_duplicates(tiny_dataset):
    from cascade_ranking.data.loader import iterate_partition
    from cascade_ranking.data.store import open_dataset

    schema = open_dataset(tiny_dataset)
    (batch,) = iterate_partition(tiny_dataset, schema, schema.partitions[0], batch_size=64, shuffle=True)
    parts = [_local_rows(batch, r, 3).request_id.tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(batch.request_id.tolist())
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_match_one_process(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data, num_partitions=4, requests_per_partition=64, padded=True)
    args = [
        "-m",
        "cascade_ranking",
        "-q",
        "train",
        "--data",
        str(data),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--threads",
        "1",
    ]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert b["world_size"] == 2
    assert a["steps"] == b["steps"] and a["train_requests"] == b["train_requests"] == 128
    for role in ("valid", "test"):
        assert a[role]["requests"] == b[role]["requests"] == 64  # every request evaluated exactly once
        for key, value in a[role].items():
            assert b[role][key] == pytest.approx(value, abs=0.02), (role, key)
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-3)

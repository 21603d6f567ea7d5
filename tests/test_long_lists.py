"""Requests of thousands of candidates: the simulator's ``candidates``, metrics and training at N = 1,000.

The simulator lays ``candidates`` slots out as RecFlow's funnel groups (10 each, best first) with the lowest
group (``prerank_neg``) taking the rest; Kendall tau switches to merge counting above ``PAIRWISE_MAX_N`` and
must equal scipy and the pairwise path; a 2-stage cascade trains end to end on N = 1,000 with ``dftopk``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from cascade_ranking import metrics
from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.recflow import funnel_spec
from cascade_ranking.datasets.synthetic import simulate, small_config


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "syn-1000"
    simulate(out, requests=90, days=3, seed=1, config=small_config(), candidates=1000)
    return out


def test_simulated_requests_hold_the_requested_candidates_in_funnel_groups(long_dataset):
    schema = open_dataset(long_dataset)
    assert schema.num_candidates == 1000 and schema.keep == [30, 20] and schema.name == "synthetic-2stage-1000cand"
    assert schema.provenance["candidates"] == 1000
    arrays = read_partition(long_dataset, schema, schema.partitions[0])
    mask, stage, label = arrays["mask"], arrays["stage"], arrays["label"]
    per_group = np.stack([((stage == g) & mask).sum(1) for g in range(4)], axis=1)  # prerank_neg = 0 ... top = 3
    assert (per_group[:, 1:] <= 10).all() and (per_group[:, 0] <= 970).all()
    assert per_group[:, 0].mean() > 900  # the pool supplies the lowest group
    top = (stage == 3) & mask
    assert (label[top] > label[~top & mask].max()).all()  # ground truth = the top group, as RecFlow
    assert ((label == 0) | mask).all()


def test_candidates_are_validated():
    with pytest.raises(ValueError, match="candidates=39: a 2-stage funnel needs at least 40"):
        funnel_spec(2).with_candidates(39)
    assert funnel_spec(3).with_candidates(50).group_sizes == (10, 10, 10, 10, 10)
    assert funnel_spec(2).with_candidates(None) is funnel_spec(2)
    with pytest.raises(ValueError, match="only the store layout"):
        simulate("/nonexistent-never-written", requests=4, days=1, layout="recflow", candidates=100)


def test_prepare_synthetic_cli_takes_candidates(tmp_path):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    out = tmp_path / "syn"
    args = ["prepare", "synthetic", str(out), "--requests", "20", "--days", "2", "--candidates", "120"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert open_dataset(out).num_candidates == 120
    bad = CliRunner().invoke(app, ["prepare", "synthetic", str(tmp_path / "x"), "--candidates", "12"])
    assert bad.exit_code != 0 and "candidates=12" in bad.output


@pytest.mark.parametrize("ties", [False, True])
def test_kendall_by_merging_equals_scipy_and_the_pairwise_path(monkeypatch, ties):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 700, generator=g, dtype=torch.float64)
    y = torch.randn(5, 700, generator=g, dtype=torch.float64)
    if ties:
        s, y = s.round(), (2 * y).round()
    s[2, 5] = math.inf
    mask = torch.rand(5, 700, generator=g) > 0.3
    mask[0] = False  # undefined: NaN, as scipy
    mask[1, 1:] = False
    got = metrics.kendall_tau(s, y, mask)  # N = 700 > PAIRWISE_MAX_N: merge counting
    assert math.isnan(got[0]) and math.isnan(got[1])
    for r in (2, 3, 4):
        want = kendalltau(s[r][mask[r]].numpy(), y[r][mask[r]].numpy()).statistic
        assert got[r].item() == pytest.approx(want, abs=1e-12)
    monkeypatch.setattr(metrics, "PAIRWISE_MAX_N", 10_000)
    torch.testing.assert_close(metrics.kendall_tau(s, y, mask), got, rtol=0, atol=1e-15, equal_nan=True)


def test_cascade_metrics_at_ten_thousand_candidates_never_build_pairs():
    """[B, N, N] float32 at B = 4, N = 10,000 would need 1.6 GB per tensor; merge counting needs O(B N)."""
    g = torch.Generator().manual_seed(0)
    label = torch.rand(4, 10_000, generator=g) * 30
    logits = [label + torch.randn(4, 10_000, generator=g) * s for s in (3.0, 1.0)]
    cm = metrics.CascadeMetrics(("retrieval", "prerank"), keep=(300, 20), gt_num=10)
    cm.update(logits, label, torch.ones_like(label, dtype=torch.bool))
    out = cm.compute()
    assert 0 <= out["joint_recall"] <= 1 and 0 < out["kendall_tau/prerank"] <= 1
    assert out["kendall_tau/prerank"] > out["kendall_tau/retrieval"]


def test_two_stage_cascade_trains_end_to_end_at_a_thousand_candidates(tmp_path, long_dataset):
    from cascade_ranking.training.config import TrainConfig
    from cascade_ranking.training.loop import train

    config = TrainConfig(data=long_dataset, device="cpu", method="dftopk", batch_size=16, passes=1, loss={"tau": 1.0})
    result = train(config, data=long_dataset, run_dir=tmp_path / "run")
    test = result.metrics["test"]
    assert 0.0 <= test["joint_recall"] <= 1.0 and test["requests"] == 30
    assert all(np.isfinite(v) for v in test.values())

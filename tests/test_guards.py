"""Numerical guards: a non-finite loss stops training with the step, method and batch named, or is skipped."""

from __future__ import annotations

import json

import pytest
import torch

from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.loop import TrainingError, train


def test_nonfinite_loss_stops_training_naming_step_method_and_batch(tmp_path, tiny_dataset, nan_at_step_3):
    config = TrainConfig(data=tiny_dataset, device="cpu", method="lcron")
    with pytest.raises(
        TrainingError, match=r"non-finite loss nan at step 3 \(method lcron, partition part-00, batch 2"
    ):
        train(config, data=tiny_dataset, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skip_nonfinite_skips_and_records_the_step(tmp_path, tiny_dataset, nan_at_step_3):
    config = TrainConfig(data=tiny_dataset, device="cpu", method="lcron", skip_nonfinite=True)
    result = train(config, data=tiny_dataset, run_dir=tmp_path / "run")
    events = result.metrics["nonfinite_steps"]
    assert [e["step"] for e in events] == [3]
    assert events[0]["partition"] == "part-00" and events[0]["what"].startswith("non-finite loss")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["nonfinite_steps"] == events
    assert all(
        torch.isfinite(p).all()
        for p in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["cascade"].values()
    )

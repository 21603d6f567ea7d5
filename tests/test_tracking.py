"""TensorBoard logging during training (read back from the event files) and the bounded loss curve."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from cascade_ranking.cli import app
from cascade_ranking.training.checkpoint import LossCurve
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.loop import train
from cascade_ranking.training.tracking import TensorBoardLogger, TrackingError, metric_scalars, step_scalars

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

F32 = dict(rel=1e-6, abs=1e-7)  # TensorBoard stores scalars as float32


def _events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    return acc


def _series(acc: EventAccumulator, tag: str) -> dict[int, float]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
    return {e.step: e.value for e in events}


class _Interrupt(Exception):
    pass


def test_lcron_run_logs_every_step_its_loss_weights_and_the_metrics(tmp_path, tiny_dataset):
    log_dir = tmp_path / "tb"
    config = TrainConfig(data=tiny_dataset, device="cpu", method="lcron", passes=3, tensorboard=log_dir)
    metrics = train(config, data=tiny_dataset, run_dir=tmp_path / "run").metrics
    steps = metrics["steps"]
    assert steps == 3 * 4  # 50 requests at batch 16, three passes

    acc = _events(log_dir)
    tags = set(acc.Tags()["scalars"])
    expected = {"loss/total", "loss/l_e2e", "loss/l_single/0", "loss/l_single/1", "loss_params/weights/0",
                "loss_params/weights/1", "train/lr", "train/requests_per_second"}  # fmt: skip
    expected |= {f"{role}/{name}" for role in ("valid", "test") for name in metrics[role]}
    assert expected <= tags

    loss = _series(acc, "loss/total")
    assert sorted(loss) == list(range(1, steps + 1))
    curve = metrics["loss_curve_every_10_steps"]
    assert len(curve) == 2  # steps 1, 11
    assert [loss[1 + 10 * i] for i in range(len(curve))] == pytest.approx(curve, **F32)
    assert loss[steps] == pytest.approx(metrics["final_loss"], **F32)
    for name, value in metrics["final_loss_parts"].items():
        assert _series(acc, f"loss/{name}")[steps] == pytest.approx(value, **F32)

    # the learnable loss weights as trained: the logged last values are the checkpoint's
    weights = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss"]["weights"]
    for i, w in enumerate(weights.tolist()):
        series = _series(acc, f"loss_params/weights/{i}")
        assert sorted(series) == list(range(1, steps + 1))
        assert series[steps] == pytest.approx(w, **F32)
    assert list(_series(acc, "train/lr").values()) == pytest.approx([0.01] * steps, **F32)
    assert all(v > 0 for v in _series(acc, "train/requests_per_second").values())

    for role in ("valid", "test"):
        for name, value in metrics[role].items():
            assert _series(acc, f"{role}/{name}") == {steps: pytest.approx(value, **F32)}


def test_a_method_without_learnable_loss_weights_logs_none(tmp_path, tiny_dataset):
    config = TrainConfig(data=tiny_dataset, device="cpu", method="bce", tensorboard=tmp_path / "tb")
    metrics = train(config, data=tiny_dataset, run_dir=tmp_path / "run").metrics
    tags = _events(tmp_path / "tb").Tags()["scalars"]
    assert not [t for t in tags if t.startswith("loss_params/")]
    assert {"loss/bce/0", "loss/bce/1"} <= set(tags) and metrics["steps"] == 4


def test_resume_appends_to_the_log_dir_and_each_step_shows_once(tmp_path, tiny_dataset):
    common = dict(data=tiny_dataset, device="cpu", method="bce", passes=3, checkpoint_every=3)
    clean = train(TrainConfig(**common, tensorboard=tmp_path / "tb-clean"), data=tiny_dataset, run_dir=tmp_path / "a")

    def stop_at_8(step, total, loss):
        if step == 8:  # two steps after the checkpoint of step 6: steps 7 and 8 get logged twice
            raise _Interrupt

    config = TrainConfig(**common, tensorboard=tmp_path / "tb")
    with pytest.raises(_Interrupt):
        train(config, data=tiny_dataset, run_dir=tmp_path / "b", on_step=stop_at_8)
    assert sorted(_series(_events(tmp_path / "tb"), "loss/total")) == list(range(1, 9))
    resumed = train(config, data=tiny_dataset, run_dir=tmp_path / "b", resume=True)

    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # one per process, same directory
    loss = _series(_events(tmp_path / "tb"), "loss/total")
    assert sorted(loss) == list(range(1, resumed.metrics["steps"] + 1))
    assert loss == _series(_events(tmp_path / "tb-clean"), "loss/total")  # bitwise-equal resume on CPU
    assert resumed.metrics["loss_curve_every_10_steps"] == clean.metrics["loss_curve_every_10_steps"]
    assert resumed.metrics["final_loss"] == clean.metrics["final_loss"]


def test_disabled_logging_imports_nothing_and_creates_nothing(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import of it would now fail
    train(TrainConfig(data=tiny_dataset, device="cpu"), data=tiny_dataset, run_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "config.json", "metrics.json"]
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    logger = TensorBoardLogger(None)
    logger.scalars(1, {"loss/total": 1.0})
    logger.close()
    assert not logger.enabled


def test_missing_tensorboard_package_is_a_clear_error_before_anything_is_written(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = TrainConfig(data=tiny_dataset, device="cpu", tensorboard=tmp_path / "tb")
    with pytest.raises(TrackingError, match=r"pip install tensorboard.*pip install -e \"\.\[tensorboard\]\""):
        train(config, data=tiny_dataset, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()

    result = CliRunner().invoke(
        app, ["train", "--data", str(tiny_dataset), "--device", "cpu", "--out", str(tmp_path / "run"),
              "--tensorboard", str(tmp_path / "tb")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "pip install tensorboard" in result.output and "Traceback" not in result.output


def test_train_and_benchmark_commands_take_tensorboard(tmp_path, tiny_dataset):
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--data", str(tiny_dataset), "--device", "cpu", "--out", str(tmp_path / "run"),
              "--tensorboard", str(tmp_path / "tb")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tensorboard"] == str(tmp_path / "tb")
    assert len(_series(_events(tmp_path / "tb"), "loss/total")) == 4

    config = tmp_path / "bench.yaml"  # also settable from a config file
    config.write_text(
        f"methods: [bce]\nrepeats: 2\ndata: {tiny_dataset}\ndevice: cpu\ntensorboard: {tmp_path / 'tbb'}\n"
    )
    result = runner.invoke(app, ["benchmark", "--config", str(config), "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "tbb").iterdir()) == ["bce-seed0", "bce-seed1"]
    for seed in (0, 1):
        saved = json.loads((tmp_path / "bench" / "runs" / f"bce-seed{seed}" / "metrics.json").read_text())
        loss = _series(_events(tmp_path / "tbb" / f"bce-seed{seed}"), "loss/total")
        assert loss[saved["steps"]] == pytest.approx(saved["final_loss"], **F32)

    # benchmark --task prerank --tensorboard: tests/test_prerank.py


def test_step_scalars_flatten_vector_parameters_with_their_index():
    module = torch.nn.Module()
    module.scale = torch.nn.Parameter(torch.tensor(2.5))
    module.w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 3.0]))
    parts = {"a": torch.tensor(1.25), "per_stage": torch.tensor([4.0, 5.0])}
    out = step_scalars(loss=7.0, parts=parts, loss_module=module, lr=0.01, requests_per_second=123.0)
    assert out == {
        "loss/total": 7.0, "loss/a": 1.25, "loss/per_stage/0": 4.0, "loss/per_stage/1": 5.0,
        "loss_params/scale": 2.5, "loss_params/w/0": 0.5, "loss_params/w/1": -1.0, "loss_params/w/2": 3.0,
        "train/lr": 0.01, "train/requests_per_second": 123.0,
    }  # fmt: skip
    assert metric_scalars({"test": {"joint_recall": 0.5, "requests": 10, "note": "x"}}) == {
        "test/joint_recall": 0.5,
        "test/requests": 10.0,
    }


def test_bounded_loss_curve_keeps_every_10th_finite_loss(tmp_path, tiny_dataset, nan_at_step_3):
    config = TrainConfig(
        data=tiny_dataset, device="cpu", method="bce", passes=3, skip_nonfinite=True, tensorboard=tmp_path / "tb"
    )
    metrics = train(config, data=tiny_dataset, run_dir=tmp_path / "run").metrics
    acc = _events(tmp_path / "tb")
    loss = _series(acc, "loss/total")
    assert sorted(loss) == [s for s in range(1, 13) if s != 3]  # the skipped step logs no loss ...
    assert _series(acc, "train/nonfinite_steps") == {3: 1.0}  # ... but a count
    finite = [loss[s] for s in sorted(loss)]  # what the old unbounded list held
    assert metrics["loss_curve_every_10_steps"] == pytest.approx(finite[::10], **F32)
    record = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss_record"]
    assert record["count"] == 11 and len(record["points"]) == 2
    assert record["points"] == metrics["loss_curve_every_10_steps"] and record["last"] == metrics["final_loss"]


def test_loss_curve_record_from_an_old_checkpoint_and_incrementally():
    full = [float(i) for i in range(25)]
    old = LossCurve.from_checkpoint({"loss_curve": full})
    assert (old.points, old.count, old.last) == (full[::10], 25, 24.0)
    assert LossCurve.from_checkpoint({"loss_curve": []}).last is None
    curve = LossCurve(points=[])
    for v in full:
        curve.add(v)
    assert curve.state() == {"points": full[::10], "count": 25, "last": 24.0}
    assert LossCurve.from_checkpoint({"loss_record": curve.state()}) == curve

"""Early stopping on validation (training/early_stopping.py, the loop's checks) and per-run model options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cascade_ranking.data.store import open_dataset
from cascade_ranking.training.build import build_cascade, resolve_config
from cascade_ranking.training.checkpoint import load_run
from cascade_ranking.training.config import EarlyStopping, TrainConfig
from cascade_ranking.training.early_stopping import EarlyStopper
from cascade_ranking.training.loop import train

FAST = TrainConfig(emb_dim=4, hidden=16, batch_size=8, passes=2, threads=1, device="cpu")


def test_stopper_keeps_the_best_weights_and_stops_after_patience():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopper(EarlyStopping(every=5, patience=2, min_delta=0.01))
    assert stopper.due(10) and not stopper.due(11)
    values = [0.10, 0.30, 0.305, 0.20]  # 0.305 is within min_delta of 0.30: no improvement
    stops, snapshots = [], []
    for i, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(float(i))
        snapshots.append({k: t.clone() for k, t in model.state_dict().items()})
        stops.append(stopper.update(5 * (i + 1), v, model))
    assert stops == [False, False, False, True]
    assert (stopper.best_step, stopper.best_value, stopper.stopped_at) == (10, 0.30, 20)
    for k, t in stopper.best_weights().items():
        torch.testing.assert_close(t, snapshots[1][k])  # a copy: later changes to the model do not leak in
    record = stopper.record()
    assert record["checks"] == [[5, 0.10], [10, 0.30], [15, 0.305], [20, 0.20]] and record["stopped_at_step"] == 20
    again = EarlyStopper.from_state(stopper.settings, stopper.state())
    assert again.record() == record and again.checked(20) and not again.checked(25)


def test_a_nonfinite_validation_value_never_counts_as_best():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopper(EarlyStopping(every=1, patience=3))
    assert not stopper.update(1, math.nan, model)
    assert stopper.best_weights() is None and stopper.record()["best_value"] is None
    stopper.update(2, 0.5, model)
    assert not stopper.update(3, math.inf, model) and stopper.best_step == 2
    assert stopper.record()["checks"][0] == [1, None]


def test_config_ranges():
    with pytest.raises(ValueError, match="every"):
        EarlyStopping(every=0)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(every=3, patience=0)
    assert TrainConfig(early_stopping={"every": 4}).early_stopping == EarlyStopping(every=4, patience=3)


def test_training_stops_early_and_keeps_the_best_checks_weights(tiny_dataset, tmp_path):
    values = iter([0.2, 0.5, 0.4, 0.3, 0.1, 0.0])
    seen = []

    def validation(cascade):
        assert not cascade.training and not torch.is_grad_enabled()
        seen.append({k: v.clone() for k, v in cascade.state_dict().items()})
        return next(values)

    config = FAST.model_copy(update={"early_stopping": EarlyStopping(every=2, patience=2)})
    result = train(config, data=tiny_dataset, run_dir=tmp_path / "run", validation=validation)
    stopping = result.metrics["early_stopping"]
    assert [c[0] for c in stopping["checks"]] == [2, 4, 6, 8]
    assert (stopping["best_step"], stopping["best_value"], stopping["stopped_at_step"]) == (4, 0.5, 8)
    assert result.metrics["steps"] == 8  # training ended at the check that ran out of patience
    saved = load_run(tmp_path / "run").cascade.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(v, seen[1][k], rtol=0, atol=0)  # the weights of step 4's check
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["early_stopping"]["best_step"] == 4
    # a resume of the finished run trains nothing more and reports the same test metrics
    again = train(config, data=tiny_dataset, run_dir=tmp_path / "run", resume=True, validation=validation)
    assert again.metrics["steps"] == 8 and again.metrics["test"] == result.metrics["test"]


def test_training_checks_at_its_end_and_uses_the_default_validation_metric(tiny_dataset, tmp_path):
    schema = open_dataset(tiny_dataset)
    steps = 2 * sum(math.ceil(p.num_requests / 8) for p in schema.partitions_with_role("train"))
    every = steps - 1  # the last step falls between checks: checked once more at the end
    config = FAST.model_copy(update={"early_stopping": EarlyStopping(every=every, patience=5)})
    metrics = train(config, data=tiny_dataset, run_dir=tmp_path / "run").metrics
    checks = metrics["early_stopping"]["checks"]
    assert [c[0] for c in checks] == [every, steps] and metrics["early_stopping"]["stopped_at_step"] is None
    assert all(0.0 <= v <= 1.0 for _, v in checks)
    best = max(checks, key=lambda c: c[1])
    assert metrics["early_stopping"]["best_step"] == best[0]
    if best[0] == steps:  # the last weights won: the run's validation metric is the last check's value
        assert metrics["valid"]["joint_recall"] == pytest.approx(best[1])


def test_unknown_metric_and_missing_validation_partition(tiny_dataset, tmp_path):
    config = FAST.model_copy(update={"early_stopping": EarlyStopping(every=1, metric="no_such")})
    with pytest.raises(ValueError, match="early_stopping.metric 'no_such'.*joint_recall"):
        train(config, data=tiny_dataset, run_dir=tmp_path / "a")
    schema = open_dataset(tiny_dataset)
    if not schema.partitions_with_role("valid"):
        pytest.skip("the tiny dataset has no valid partition")
    data = tmp_path / "novalid"
    _copy_without_valid(tiny_dataset, data)
    with pytest.raises(ValueError, match="early_stopping needs a partition with role 'valid'"):
        train(config.model_copy(update={"early_stopping": EarlyStopping(every=1)}), data=data, run_dir=tmp_path / "b")


def _copy_without_valid(src, dst):
    import shutil

    shutil.copytree(src, dst)
    schema = json.loads((dst / "schema.json").read_text())
    schema["partitions"] = [p for p in schema["partitions"] if p["role"] != "valid"]
    (dst / "schema.json").write_text(json.dumps(schema))


def test_model_options_reach_every_stage_model_and_bad_ones_are_named(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    config = TrainConfig(models=["dssm", "ranktower"], model_options={"ranktower": {"heads_user": 2, "heads_item": 3}})
    cascade = build_cascade(resolve_config(config, schema, tiny_dataset), schema)
    tower = cascade.stages[1].model
    assert (tower.user_net.heads, tower.item_net.heads) == (2, 3)
    with pytest.raises(ValueError, match=r"model_options\['dssm'\] = \{'heads_user': 2\}: the model does not take"):
        bad = TrainConfig(models=["dssm", "din"], model_options={"dssm": {"heads_user": 2}})
        build_cascade(resolve_config(bad, schema, tiny_dataset), schema)
    with pytest.raises(ValueError, match=r"model_options names \['ranktower'\], not stage models"):
        bad = TrainConfig(models=["dssm", "din"], model_options={"ranktower": {"heads_user": 2}})
        build_cascade(resolve_config(bad, schema, tiny_dataset), schema)


def test_fingerprint_of_a_run_without_the_new_fields_is_unchanged(tiny_dataset):
    import hashlib

    from cascade_ranking.training.fingerprint import NOT_FINGERPRINTED, run_fingerprint

    config = resolve_config(FAST, open_dataset(tiny_dataset), tiny_dataset)
    before = config.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED) | {"model_options", "early_stopping"})
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert run_fingerprint(config, tiny_dataset)["config"] == digest  # what a release without the fields saved
    stopping = config.model_copy(update={"early_stopping": EarlyStopping(every=3)})
    options = config.model_copy(update={"model_options": {"din": {"attention_hidden": 8}}})
    assert len({run_fingerprint(c, tiny_dataset)["config"] for c in (config, stopping, options)}) == 3


def test_set_reaches_nested_options_and_the_train_command_stops_early(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app
    from cascade_ranking.training.config import config_from, parse_sets

    config = config_from(TrainConfig, None, {}, ["early_stopping.every=2", "model_options.din.attention_hidden=8"])
    assert config.early_stopping == EarlyStopping(every=2) and config.model_options == {"din": {"attention_hidden": 8}}
    with pytest.raises(ValueError, match="'loss' was set to a value, not a mapping"):
        parse_sets(["loss=3", "loss.tau.x=2"])
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--device", "cpu", "--threads", "1",
            "--batch-size", "8", "--passes", "3", "--set", "early_stopping.every=3",
            "--set", "early_stopping.patience=1", "--set", "early_stopping.min_delta=0.5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stopping = json.loads((out / "metrics.json").read_text())["early_stopping"]
    # no gain of 0.5 in joint recall after the first check: patience 1 stops at the second
    assert [c[0] for c in stopping["checks"]] == [3, 6] and stopping["stopped_at_step"] == 6
    assert stopping["best_step"] == 3

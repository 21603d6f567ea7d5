"""The training protocol end to end: run folder, re-evaluation, determinism, real data."""

from __future__ import annotations

import json

import pytest

from cascade_ranking.training.checkpoint import load_run
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.evaluate import PopularityScorer, RandomScorer, evaluate
from cascade_ranking.training.loop import train


def _train(tmp_path, data, **kw):
    config = TrainConfig(data=data, device="cpu", **kw)
    return train(config, data=data, run_dir=tmp_path / "run")


def test_train_writes_a_complete_run_folder(tmp_path, tiny_dataset):
    result = _train(tmp_path, tiny_dataset, method="lcron", passes=2)
    run = result.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["keep"] == [8, 5] and config["models"] == ["dssm", "din"] and config["batch_size"] == 16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 4  # 2 passes x 1 train partition of 50 requests at batch 16 (last one partial)
    assert metrics["train_requests"] == 100
    assert metrics["test"]["requests"] == 50 and metrics["valid"]["requests"] == 50
    assert 0.0 <= metrics["test"]["joint_recall"] <= 1.0
    assert set(metrics["final_loss_parts"]) >= {"l_e2e"}
    assert metrics["versions"]["torch"]
    assert (run / "checkpoint.pt").is_file()


def test_reevaluating_a_saved_run_gives_the_same_metrics(tmp_path, tiny_dataset):
    result = _train(tmp_path, tiny_dataset, method="lcron")
    run = load_run(result.run_dir)
    config, schema, data, cascade = run.config, run.schema, run.data, run.cascade
    values = evaluate(
        cascade.eval(),
        data,
        schema,
        schema.partitions_with_role("test"),
        stage_names=[s.name for s in cascade.stages],
        keep=config.keep,
        gt_num=config.gt_num,
        seed=config.seed,
    )
    assert values == pytest.approx(result.metrics["test"])


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path, tiny_dataset):
    a = _train(tmp_path / "a", tiny_dataset, method="lcron", seed=3).metrics
    b = _train(tmp_path / "b", tiny_dataset, method="lcron", seed=3).metrics
    c = _train(tmp_path / "c", tiny_dataset, method="lcron", seed=4).metrics
    assert a["test"] == b["test"] and a["final_loss"] == b["final_loss"]
    assert a["final_loss"] != c["final_loss"]


def test_keep_that_does_not_fit_the_data_is_rejected(tmp_path, tiny_dataset):
    with pytest.raises(ValueError, match="cannot keep 20 of only 12"):
        _train(tmp_path, tiny_dataset, keep=[20, 5])
    with pytest.raises(ValueError, match="one stage model per keep size"):
        _train(tmp_path, tiny_dataset, keep=[8, 6, 4], models=["dssm", "din"])


def test_unknown_method_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: lcron"):
        TrainConfig(method="nope")


def test_reference_scorers(tiny_dataset):
    from cascade_ranking.data.store import open_dataset

    schema = open_dataset(tiny_dataset)
    test = schema.partitions_with_role("test")
    kw = dict(stage_names=["retrieval", "prerank"], keep=schema.keep, gt_num=schema.gt_num)
    rnd = evaluate(RandomScorer(2, seed=0), tiny_dataset, schema, test, **kw)
    assert rnd["requests"] == 50
    pop = PopularityScorer.fit(tiny_dataset, schema, 2)
    assert pop.counts.sum() > 0
    evaluate(pop, tiny_dataset, schema, test, **kw)


@pytest.mark.slow
def test_lcron_on_movielens_beats_random_and_popularity(tmp_path, ml100k_dataset):
    """The foundation's acceptance check on real data (a few minutes on 2 CPUs)."""
    from cascade_ranking.data.store import open_dataset

    result = _train(tmp_path, ml100k_dataset, method="lcron")
    schema = open_dataset(ml100k_dataset)
    kw = dict(stage_names=["retrieval", "prerank"], keep=schema.keep, gt_num=schema.gt_num)
    test = schema.partitions_with_role("test")
    pop = evaluate(PopularityScorer.fit(ml100k_dataset, schema, 2), ml100k_dataset, schema, test, **kw)
    joint = result.metrics["test"]["joint_recall"]
    assert pop["joint_recall"] <= 0.75
    assert joint > pop["joint_recall"] + 0.03


def test_metrics_record_every_loss_hyperparameter_used(tmp_path, tiny_dataset):
    import inspect

    from cascade_ranking.losses.lcron import LCRONLoss

    config = TrainConfig(data=tiny_dataset, device="cpu", method="lcron", passes=1, loss={"tau": 20.0})
    metrics = train(config, data=tiny_dataset, run_dir=tmp_path / "run").metrics
    defaults = {k: p.default for k, p in inspect.signature(LCRONLoss).parameters.items() if k not in ("keep", "gt_num")}
    assert metrics["loss_hyperparameters"] == {**defaults, "tau": 20.0}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["loss_hyperparameters"]["tau"] == 20.0 and saved["loss_hyperparameters"]["q"] == defaults["q"]

"""The pre-ranking benchmark task, its metrics and data variants, and the LR / COLD models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from cascade_ranking.data.loader import iterate_partitions
from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.prerank import VARIANTS, derive_variant
from cascade_ranking.datasets.ranktower_sampling import FitConfig, RankTowerSamplingConfig, build_ranktower_samples
from cascade_ranking.experiments import prerank
from cascade_ranking.experiments.prerank import (
    ABLATIONS,
    PAPER_KUAIRAND,
    TABLE1,
    evaluate_prerank,
    evaluate_user_lists,
    run_prerank_benchmark,
)
from cascade_ranking.models import build_model
from cascade_ranking.models.cold import COLD
from cascade_ranking.models.lr import LR
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.types import RequestBatch
from conftest import random_batch

TINY_FIT = FitConfig(epochs=1, batch_size=128, emb_dim=4, hidden=8, negatives=4)
TINY = RankTowerSamplingConfig(
    candidate_samples=8, random_samples=6, keep=12, history_length=10, retriever=TINY_FIT, ranker=TINY_FIT
)
FAST = TrainConfig(emb_dim=4, hidden=16, batch_size=512, passes=1, threads=1, device="cpu")


# ------------------------------------------------------------------------------------------------------
# LR and COLD
# ------------------------------------------------------------------------------------------------------
def toy_schema() -> DatasetSchema:
    return DatasetSchema(
        name="toy",
        features=[
            {"name": "user_id", "role": "user", "vocab_size": 40},
            {"name": "gender", "role": "user", "vocab_size": 3},
            {"name": "hour", "role": "context", "vocab_size": 5},
            {"name": "item_id", "role": "item", "vocab_size": 50},
            {"name": "genre", "role": "item", "vocab_size": 6},
        ],
        history=[{"name": "item_id", "item_field": "item_id"}, {"name": "genre", "item_field": "genre"}],
        history_length=4,
        num_candidates=7,
        funnel_positions=["random", "candidate", "impression"],
        keep=[4],
        gt_num=2,
        partitions=[],
    )


def toy_batch(schema: DatasetSchema, b: int = 5, seed: int = 0) -> RequestBatch:
    return random_batch(schema, b, seed, min_history=0, label=False)


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx] = 0


def lr_reference(model: LR, batch: RequestBatch, max_cross: int) -> np.ndarray:
    """The LR score by hand: loops over requests, candidates and history slots."""
    w = {name: t.weight.detach().numpy()[:, 0] for name, t in model.first.items()}
    hw = {name: t.weight.detach().numpy()[:, 0] for name, t in model.history_first.items()}
    vocab = model.vocab
    b, n = batch.mask.shape
    req_fields = [("user", "user_id"), ("user", "gender"), ("context", "hour")]
    out = np.zeros((b, n))
    for i in range(b):
        feats = {"user": batch.user, "context": batch.context}
        valid = [l for l in range(batch.history_mask.shape[1]) if batch.history_mask[i, l]]
        base = float(model.bias.detach())
        base += sum(w[f][int(feats[r][f][i])] for r, f in req_fields)
        for h in ("item_id", "genre"):
            base += np.mean([hw[h][int(batch.history[h][i, l])] for l in valid]) if valid else 0.0
        for j in range(n):
            s = base + sum(w[g][int(batch.item[g][i, j])] for g in ("item_id", "genre"))
            for r, f in req_fields:
                for g in ("item_id", "genre"):
                    if vocab[f] * vocab[g] <= max_cross:
                        a, c = int(feats[r][f][i]), int(batch.item[g][i, j])
                        table = model.cross[f"{f}__x__{g}"].weight.detach().numpy()[:, 0]
                        s += table[a * vocab[g] + c] if a and c else 0.0
            for h in ("item_id", "genre"):
                if vocab[h] ** 2 <= max_cross and valid:
                    table = model.history_cross[f"{h}__x__{h}"].weight.detach().numpy()[:, 0]
                    c = int(batch.item[h][i, j])
                    vals = [int(batch.history[h][i, l]) for l in valid]
                    s += np.mean([table[v * vocab[h] + c] if v and c else 0.0 for v in vals])
            out[i, j] = s
    return out


@pytest.mark.parametrize("max_cross", [0, 40, 1024])
def test_lr_matches_the_formula(max_cross):
    schema = toy_schema()
    model = LR(schema, max_cross_vocab=max_cross)
    randomize(model)
    batch = toy_batch(schema)
    got = model(batch).detach().numpy()
    np.testing.assert_allclose(got, lr_reference(model, batch, max_cross), rtol=1e-5, atol=1e-5)
    crosses = {f"{f}__x__{g}" for _, f, g in model.crosses}
    assert (
        crosses
        == {
            0: set(),
            40: {"gender__x__genre", "hour__x__genre"},
            1024: {"gender__x__item_id", "gender__x__genre", "hour__x__item_id", "hour__x__genre", "user_id__x__genre"},
        }[max_cross]
    )
    assert {h for h, _ in model.history_crosses} == ({"genre"} if max_cross >= 36 else set())


def test_lr_starts_constant_and_pads_get_no_gradient():
    schema = toy_schema()
    model = LR(schema)
    batch = toy_batch(schema)
    assert (model(batch) == 0).all()
    randomize(model)
    scores = model(batch)
    scores[batch.mask].sum().backward()
    for t in list(model.first.values()) + list(model.cross.values()) + list(model.history_cross.values()):
        assert t.weight.grad is None or (t.weight.grad[0] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="max_cross_vocab"):
        LR(schema, max_cross_vocab=-1)


@pytest.mark.parametrize("name", ["lr", "cold"])
def test_scores_follow_the_candidates(name):
    schema = toy_schema()
    model = build_model(name, schema, emb_dim=4, hidden=16)
    randomize(model)
    batch = toy_batch(schema)
    scores = model(batch)
    assert scores.shape == batch.mask.shape and scores.dtype == torch.float32
    perm = torch.randperm(batch.mask.shape[1], generator=torch.Generator().manual_seed(3))
    permuted = RequestBatch(**{**batch.__dict__, "item": {k: v[:, perm] for k, v in batch.item.items()}})
    torch.testing.assert_close(model(permuted), scores[:, perm])
    (scores * batch.mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_cold_se_gating():
    schema = toy_schema()
    model = COLD(schema, emb_dim=4, hidden=16)
    batch = toy_batch(schema)
    weights = model.feature_weights(batch)
    groups = 3 + 2 + 2  # user/context fields, history fields, item fields
    assert weights.shape == (*batch.mask.shape, groups) and ((weights > 0) & (weights < 1)).all()
    # by hand: gated embeddings through the MLP
    x = model._inputs(batch)
    gated = (x.view(*x.shape[:2], groups, 4) * weights.unsqueeze(-1)).flatten(2)
    torch.testing.assert_close(model(batch), model.mlp(gated).squeeze(-1))
    plain = COLD(schema, emb_dim=4, hidden=16, se=False)
    assert plain.se is None and (plain.feature_weights(batch) == 1).all()
    with pytest.raises(ValueError, match="hidden"):
        COLD(schema, hidden=2)


# ------------------------------------------------------------------------------------------------------
# the benchmark on a small MovieLens subset
# ------------------------------------------------------------------------------------------------------
def tiny_samples(src: Path, out: Path, name: str, config: RankTowerSamplingConfig = TINY) -> Path:
    """Full-stage samples of MovieLens-100K's first 60 users (``config``: :data:`TINY` or a variant)."""
    from cascade_ranking.datasets.movielens import movielens_log, read_movielens

    log = movielens_log(read_movielens(src))
    build_ranktower_samples(log.select(log.user <= 60), out, name=name, config=config, threads=1)
    return out


@pytest.fixture(scope="module")
def prerank_data(ml100k_src, tmp_path_factory) -> Path:
    return tiny_samples(ml100k_src, tmp_path_factory.mktemp("prerank") / "data", "ml-tiny-prerank")


def test_metrics_against_brute_force_and_sklearn(prerank_data):
    schema = open_dataset(prerank_data)
    test = schema.partitions_with_role("test")
    g = torch.Generator().manual_seed(0)
    scores: dict[int, torch.Tensor] = {}

    def scorer(batch: RequestBatch) -> torch.Tensor:
        s = torch.rand(batch.mask.shape, generator=g)
        for i, rid in enumerate(batch.request_id.tolist()):
            scores[rid] = (s[i], batch.label[i], batch.mask[i])
        return s

    got = evaluate_prerank(scorer, prerank_data, schema, test, ks=[5, 12])
    recall, ndcg = {5: [], 12: []}, {5: [], 12: []}
    for s, y, m in scores.values():
        s, y = s[m].numpy(), y[m].numpy()
        impressions = set(np.flatnonzero(y > 0))
        for k in (5, 12):
            recall[k].append(len(set(np.argsort(-s)[:k]) & impressions) / len(impressions))
            ndcg[k].append(ndcg_score(y[None], s[None], k=k))
    assert got["requests"] == len(scores) == sum(p.num_requests for p in test) > 0
    for k in (5, 12):
        assert math.isclose(got[f"recall@{k}"], np.mean(recall[k]), abs_tol=1e-9)
        assert math.isclose(got[f"ndcg@{k}"], np.mean(ndcg[k]), abs_tol=1e-9)
    oracle = evaluate_prerank(lambda b: b.label, prerank_data, schema, test, ks=[10, 12])
    assert oracle["recall@10"] == 1.0 and oracle["ndcg@12"] == pytest.approx(1.0)
    worst = evaluate_prerank(lambda b: -b.label, prerank_data, schema, test, ks=[12])
    assert worst["recall@12"] == 0.0  # 14 negatives come first


def test_variants_mask_training_samples_only(prerank_data, tmp_path):
    schema = open_dataset(prerank_data)
    no_random = derive_variant(prerank_data, tmp_path / "no_random", "no_random")
    hard = derive_variant(prerank_data, tmp_path / "hard", "hard_teacher")
    random_pos = schema.funnel_positions.index("random")
    for part in schema.partitions:
        src = read_partition(prerank_data, schema, part)
        got = read_partition(no_random, open_dataset(no_random), part)
        dropped = src["stage"] == random_pos
        if part.role == "train":
            assert (got["mask"] == ~dropped).all() and (got["item.item_id"][dropped] == 0).all()
            assert (got["soft_label"][dropped] == 0).all()
            np.testing.assert_array_equal(got["label"][~dropped], src["label"][~dropped])
        else:
            for k in src:
                np.testing.assert_array_equal(got[k], src[k])
        assert "soft_label" not in read_partition(hard, open_dataset(hard), part)
    assert derive_variant(prerank_data, tmp_path / "no_random", "no_random") == no_random  # reused
    with pytest.raises(ValueError, match="unknown variant"):
        derive_variant(prerank_data, tmp_path / "x", "no_such")


def test_tiny_benchmark_end_to_end(prerank_data, tmp_path):
    out = tmp_path / "bench"
    seen = []
    results = run_prerank_benchmark(
        data=prerank_data,
        out_dir=out,
        models=["lr", "ranktower"],
        base=FAST,
        on_run=lambda row, seed, m: seen.append((row, seed, m["test"]["recall@12"])),
    )
    assert [r for r, _, _ in seen] == ["lr", "ranktower"]
    assert list(results["summary"]) == ["lr", "ranktower", "random", "popularity"]
    assert results["keep"] == [12] and results["ks"] == [10, 12]
    for row in results["runs"]:
        for key in ("recall@12", "recall@10", "ndcg@10", "ndcg@12"):
            assert 0.0 <= row[key] <= 1.0
    # the primary metric Recall@keep is exactly the one-stage cascade's joint recall that train() measured
    assert results["primary_metric"] == "recall@12" and "joint_recall" not in results["runs"][0]
    for key in ("lr", "ranktower"):
        train_metrics = json.loads((out / "runs" / f"{key}-seed0" / "metrics.json").read_text())
        assert results["summary"][key]["recall@12"]["mean"] == pytest.approx(train_metrics["test"]["joint_recall"])
    for name in ("results.json", "results.csv", "results.md", "recall_at_12.png", "report.html"):
        assert (out / name).is_file()
    md = (out / "results.md").read_text()
    assert "## Table 1" in md and "recall@12" in md and "| ranktower |" in md
    # a second call reuses every finished run
    again = run_prerank_benchmark(data=prerank_data, out_dir=out, models=["lr", "ranktower"], base=FAST)
    assert again["summary"] == results["summary"]


def test_ablation_rows_cover_tables_2_to_4():
    from cascade_ranking import losses
    from cascade_ranking.models import available_models

    assert [r.key for r in TABLE1] == ["lr", "two_tower", "dat", "cold", "inttower", "din", "arf", "ranktower"]
    assert {r.table for r in ABLATIONS} == {"table2", "table3", "table4", "model_vs_loss"}
    # not in the paper: each model with the other's loss, to tell the model's share from the loss's
    swapped = [(r.model, r.method) for r in ABLATIONS if r.table == "model_vs_loss"]
    assert swapped == [("ranktower", "bce"), ("dssm", "ranktower")]
    # Table 3 of the paper: hybrid (the ranktower row), sorting, AM-Rankmax, Rankmax, Softmax, ApproxNDCG, RankNet
    assert [r.method for r in ABLATIONS if r.table == "table3"] == [
        "ranktower_sort",
        "am_rankmax",
        "rankmax",
        "softmax",
        "approx_ndcg",
        "ranknet",
    ]
    # Table 4: softmax (the ranktower row), weighted logloss, pairwise logloss, none
    table4 = [r.loss for r in ABLATIONS if r.table == "table4"]
    assert [d.get("distillation") for d in table4] == ["weighted_logloss", "pairwise_logloss", None]
    assert table4[-1]["lambdas"][0] == 0.0
    assert {r.variant for r in ABLATIONS} == (set(VARIANTS) - {"hard_teacher"}) | {None}
    # every row the paper reports has its KuaiRand numbers beside ours
    ours = {"din", "ranktower model + bce", "two_tower model + hybrid loss"}
    assert {r.key for r in TABLE1 + ABLATIONS} - ours == set(PAPER_KUAIRAND)
    for row in TABLE1 + ABLATIONS:
        assert row.method in losses.REGISTRY and row.model in available_models()
        losses.build(row.method, keep=[12], gt_num=10, **row.loss)


def test_ablations_run_and_bad_arguments(prerank_data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown pre-ranking rows"):
        run_prerank_benchmark(data=prerank_data, out_dir=tmp_path, models=["gbdt"])
    with pytest.raises(ValueError, match="repeats"):
        run_prerank_benchmark(data=prerank_data, out_dir=tmp_path, repeats=0)
    with pytest.raises(ValueError, match="no pre-ranking row"):
        run_prerank_benchmark(data=prerank_data, out_dir=tmp_path, models=[])
    # one row of each ablation table (all eight take too long for a unit test)
    rows = {r.key: r for r in ABLATIONS}
    picked = tuple(rows[k] for k in ("w/o candidate", "am-rankmax", "no distillation"))
    monkeypatch.setattr(prerank, "ABLATIONS", picked)
    results = run_prerank_benchmark(data=prerank_data, out_dir=tmp_path / "abl", models=[], ablations=True, base=FAST)
    assert set(results["tables"]) == {"table2", "table3", "table4"}
    assert len(results["runs"]) == 3 and all(0.0 <= r["recall@12"] <= 1.0 for r in results["runs"])
    assert (tmp_path / "abl" / "data" / "no_candidate" / "schema.json").is_file()
    config = json.loads((tmp_path / "abl" / "runs" / "no_distillation-seed0" / "config.json").read_text())
    assert config["loss"] == {"lambdas": [0.0, 0.1, 1.0]} and config["models"] == ["ranktower"]
    assert "## Table 3" in (tmp_path / "abl" / "results.md").read_text()


def test_not_a_prerank_dataset(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="not a pre-ranking dataset"):
        run_prerank_benchmark(data=tiny_dataset, out_dir=tmp_path)


def test_loader_sees_soft_labels(prerank_data):
    schema = open_dataset(prerank_data)
    batch = next(iterate_partitions(prerank_data, schema, schema.partitions[-1:], batch_size=8, shuffle=False))
    assert batch.soft_label is not None and batch.soft_label.shape == batch.mask.shape


def test_benchmark_command_task_prerank(prerank_data, tmp_path):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--task",
            "prerank",
            "--methods",
            "lr",
            "--repeats",
            "1",
            "--data",
            str(prerank_data),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--passes",
            "1",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "## Table 1" in result.stdout and "| lr |" in result.stdout
    assert (out / "results.json").is_file()


def test_prerank_benchmark_logs_each_run_to_its_own_tensorboard_directory(prerank_data, tmp_path):
    pytest.importorskip("tensorboard")
    base = FAST.model_copy(update={"tensorboard": tmp_path / "tb"})
    run_prerank_benchmark(data=prerank_data, out_dir=tmp_path / "bench", models=["lr"], repeats=2, base=base)
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["lr-seed0", "lr-seed1"]
    for seed in (0, 1):
        assert list((tmp_path / "tb" / f"lr-seed{seed}").glob("events.out.tfevents.*"))


def test_user_list_metrics_against_brute_force_and_sklearn(tmp_path):
    """Recall@K / NDCG@K over a user's concatenated sample list (RankTower Sec. 5.1.2) vs set intersection and
    scikit-learn's ndcg_score; users without a relevant sample are skipped; short lists have Recall@K = 1."""
    from sklearn.metrics import ndcg_score

    from cascade_ranking.data.schema import DatasetSchema, Partition
    from cascade_ranking.data.store import write_partition, write_schema

    rng = np.random.default_rng(0)
    b, n = 9, 6
    schema = DatasetSchema(
        name="lists", features=[{"name": "user_id", "role": "user", "vocab_size": 5},
                                {"name": "item_id", "role": "item", "vocab_size": 60}],
        history=[], history_length=0, num_candidates=n, funnel_positions=["random", "candidate", "impression"],
        keep=[3], gt_num=2, partitions=[Partition(name="t", role="test", num_requests=b)],
    )  # fmt: skip
    user = np.array([1, 2, 1, 3, 2, 1, 4, 3, 1])
    mask = rng.random((b, n)) > 0.2
    label = np.where(mask, rng.integers(0, 3, (b, n)), 0).astype(np.float32)
    label[user == 4] = np.minimum(label[user == 4], 1.0)  # user 4: no relevant sample
    items = np.arange(1, b * n + 1).reshape(b, n) % 60 * mask
    arrays = {"request_id": np.arange(b), "user.user_id": user, "item.item_id": items, "mask": mask,
              "stage": np.where(label > 0, 2, 0), "label": label}  # fmt: skip
    write_partition(tmp_path, schema, schema.partitions[0], arrays)
    write_schema(tmp_path, schema)
    table = rng.normal(size=60)  # a score per item id: distinct, so ties do not matter

    def score(batch):
        return torch.as_tensor(table, dtype=torch.float64)[batch.item["item_id"]]

    got = evaluate_user_lists(score, tmp_path, schema, schema.partitions, ks=[3, 100], relevant_label=2.0)
    recall, ndcg = {3: [], 100: []}, {3: [], 100: []}
    for u in (1, 2, 3):
        rows = user == u
        s, y = table[items[rows][mask[rows]]], label[rows][mask[rows]]
        for k in (3, 100):
            top = set(np.argsort(-s)[:k].tolist())
            rel = set(np.flatnonzero(y >= 2).tolist())
            recall[k].append(len(top & rel) / len(rel))
            ndcg[k].append(ndcg_score([y], [s], k=k))
    assert got["users"] == 3 and got["requests"] == b
    for k in (3, 100):
        assert got[f"recall@{k}"] == pytest.approx(np.mean(recall[k]), rel=1e-12)
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg[k]), rel=1e-9)
    assert got["recall@100"] == 1.0 and got["short@100"] == 1.0 and got["short@3"] == 0.0

"""The pre-ranking benchmark's equal tuning budget (experiments/prerank_tuning.py) and early stopping under the
paper protocol, on a small MovieLens subset split at random per user."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cascade_ranking.data.store import open_dataset
from cascade_ranking.experiments import prerank
from cascade_ranking.experiments.prerank import run_prerank_benchmark
from cascade_ranking.experiments.prerank_tuning import (
    GRID_BUDGET,
    TUNING_GRID,
    GridPoint,
    choose_points,
    tuned_rows,
    tuning_rows,
    with_point,
)
from cascade_ranking.experiments.runner import BenchmarkRow
from cascade_ranking.training.config import TrainConfig
from test_prerank import TINY, tiny_samples

PAPER_TINY = replace(TINY, split="random", positive_rating=4.0)  # the paper protocol's split and labels
FAST = TrainConfig(emb_dim=4, hidden=16, batch_size=64, passes=2, threads=1, device="cpu")
GRID = {
    "lr": (GridPoint("lr 0.001", {"lr": 1e-3}), GridPoint("lr 0.01", {"lr": 1e-2})),
    "ranktower": (
        GridPoint("heads 2, alpha 2", {"model_options": {"ranktower": {"heads_user": 2, "heads_item": 2}},
                                       "loss": {"alpha": 2.0}}),
        GridPoint("heads 3, alpha 5", {"model_options": {"ranktower": {"heads_user": 3, "heads_item": 3}},
                                       "loss": {"alpha": 5.0}}),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def paper_data(ml100k_src, tmp_path_factory) -> Path:
    return tiny_samples(ml100k_src, tmp_path_factory.mktemp("paper") / "data", "ml-tiny-paper", PAPER_TINY)


def test_the_grid_gives_every_table1_row_the_same_budget():
    assert set(TUNING_GRID) == {r.key for r in prerank.TABLE1}
    assert {len(points) for points in TUNING_GRID.values()} == {GRID_BUDGET}
    for points in TUNING_GRID.values():
        assert len({p.label for p in points}) == GRID_BUDGET  # distinct points
    alphas = {p.updates["loss"]["alpha"] for p in TUNING_GRID["ranktower"]}
    assert alphas == {2.0, 5.0}  # the ends of the paper's [2, 5]


def test_points_merge_into_rows_and_drop_loss_options_a_method_lacks():
    point = GRID["ranktower"][1]
    hybrid = with_point({"method": "ranktower", "loss": {"distillation": "weighted_logloss"}}, point)
    assert hybrid["loss"] == {"distillation": "weighted_logloss", "alpha": 5.0}
    assert hybrid["model_options"] == {"ranktower": {"heads_user": 3, "heads_item": 3}}
    softmax = with_point({"method": "softmax", "loss": {}}, point)
    assert softmax["loss"] == {} and softmax["model_options"]["ranktower"]["heads_user"] == 3


def test_choice_is_the_best_validation_value_and_rows_reuse_its_folder():
    rows = [BenchmarkRow("lr", {"method": "bce", "loss": {}}, None, "table1"),
            BenchmarkRow("ranktower", {"method": "ranktower", "loss": {}}, None, "table1"),
            BenchmarkRow("softmax", {"method": "softmax", "loss": {}}, None, "table3")]  # fmt: skip
    grid_rows = tuning_rows(rows, GRID)
    assert [r.key for r in grid_rows] == [
        "tune lr: lr 0.001", "tune lr: lr 0.01", "tune ranktower: heads 2, alpha 2", "tune ranktower: heads 3, alpha 5"
    ]  # fmt: skip
    valid = dict(zip([r.key for r in grid_rows], [0.5, 0.5, 0.2, 0.7]))
    best = choose_points(rows, GRID, valid)
    assert best["lr"].label == "lr 0.001"  # a tie goes to the first point
    assert best["ranktower"].label == "heads 3, alpha 5"
    tuned = {r.key: r for r in tuned_rows(rows, best, shared="ranktower")}
    assert tuned["lr"].folder == "tune lr: lr 0.001" and tuned["lr"].updates["lr"] == 1e-3
    assert tuned["softmax"].folder is None and tuned["softmax"].updates["model_options"]["ranktower"]["heads_user"] == 3
    swapped = BenchmarkRow("two_tower model + hybrid loss", {"method": "ranktower", "loss": {}}, None, "x")
    (row,) = tuned_rows([swapped], {"lr": GRID["lr"][1], "ranktower": GRID["ranktower"][0]}, "ranktower",
                        point_of={swapped.key: "lr"})  # fmt: skip
    assert row.updates["lr"] == 1e-2 and "model_options" not in row.updates  # the named row's point, not RankTower's
    with pytest.raises(ValueError, match="same number of points"):
        tuning_rows(rows, {**GRID, "lr": GRID["lr"][:1]})


def test_paper_protocol_tunes_on_validation_and_stops_early(paper_data, tmp_path, monkeypatch):
    picked = tuple(r for r in prerank.ABLATIONS if r.key == "softmax")
    monkeypatch.setattr(prerank, "ABLATIONS", picked)
    out = tmp_path / "bench"
    results = run_prerank_benchmark(data=paper_data, out_dir=out, models=["lr"], ablations=True, repeats=2,
                                    base=FAST, grid=GRID)  # fmt: skip
    schema = open_dataset(paper_data)
    assert results["protocol"] == "paper" and results["early_stopping"]["metric"] == "recall@12"
    train_steps = sum(-(-p.num_requests // 64) for p in schema.partitions_with_role("train"))
    assert results["early_stopping"]["every"] == max(1, train_steps // 2)
    tuning = results["tuning"]
    assert [(t["row"], t["point"]) for t in tuning] == [
        ("lr", "lr 0.001"),
        ("lr", "lr 0.01"),
        ("ranktower", "heads 2, alpha 2"),
        ("ranktower", "heads 3, alpha 5"),
    ]  # fmt: skip — RankTower's grid runs because the softmax ablation takes its point
    for row in ("lr", "ranktower"):
        entries = [t for t in tuning if t["row"] == row]
        chosen = [t for t in entries if t["chosen"]]
        assert len(chosen) == 1
        assert chosen[0]["valid"]["recall@12"] == max(t["valid"]["recall@12"] for t in entries)
    lr_point = next(t["point"] for t in tuning if t["row"] == "lr" and t["chosen"])
    slug = "tune_lr__lr_" + lr_point.split()[1].replace(".", "_")
    runs = out / "runs"
    assert (runs / f"{slug}-seed1").is_dir() and not (runs / "lr-seed0").exists()  # seed 0 reused from the grid
    seed0 = next(r for r in results["runs"] if r["row"] == "lr" and r["seed"] == 0)
    tuned = next(t for t in tuning if t["row"] == "lr" and t["chosen"])
    assert seed0["recall@100"] == tuned["test"]["recall@100"]
    metrics = json.loads((runs / f"{slug}-seed1" / "metrics.json").read_text())
    assert metrics["early_stopping"]["metric"] == "recall@12" and metrics["early_stopping"]["checks"]
    rt_point = next(t for t in tuning if t["row"] == "ranktower" and t["chosen"])
    softmax = json.loads((runs / "softmax-seed0" / "config.json").read_text())
    heads = 2 if rt_point["point"].startswith("heads 2") else 3
    assert softmax["model_options"] == {"ranktower": {"heads_user": heads, "heads_item": heads}}
    assert "alpha" not in softmax["loss"]
    md = (out / "results.md").read_text()
    assert "## Tuning" in md and "lr 0.01" in md
    assert set(results["summary"]) >= {"lr", "softmax", "random", "popularity"}

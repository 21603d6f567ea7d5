"""RankTower's full-stage sampling on (a user subset of) the MovieLens-100K test copy.

Invariants: no negative is an interacted item; candidate samples are the two-tower model's top allowed items;
soft labels are the ranker's finite predictions; hard labels follow Sec. 4.2; models are fitted on the training
weeks only (changing the test weeks' interactions leaves training and validation samples unchanged);
identical files for the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_ranking.data.loader import to_batch
from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.full_stage import InteractionLog, make_requests, week_start_seconds
from cascade_ranking.datasets.ranktower_sampling import (
    FUNNEL_POSITIONS,
    FitConfig,
    RankTowerSamplingConfig,
    build_ranktower_samples,
    corpus_scores,
    hard_labels,
    period_cutoffs,
)
from cascade_ranking.losses.ranktower import aggregate_hard_labels

SMALL_FIT = FitConfig(epochs=1, batch_size=128, emb_dim=4, hidden=16, negatives=5)
CONFIG = RankTowerSamplingConfig(
    candidate_samples=8,
    random_samples=6,
    keep=12,
    history_fields=("item_id", "genre"),
    retriever=SMALL_FIT,
    ranker=SMALL_FIT,
)
S, C, R = CONFIG.group_size, CONFIG.candidate_samples, CONFIG.random_samples
IMPRESSION, CANDIDATE, RANDOM = (FUNNEL_POSITIONS.index(p) for p in ("impression", "candidate", "random"))


def subset_log(src: Path, max_user: int = 160) -> InteractionLog:
    from cascade_ranking.datasets.movielens import movielens_log, read_movielens

    log = movielens_log(read_movielens(src))
    return log.select(log.user <= max_user)


def build(log: InteractionLog, out: Path, seed: int = 0):
    return build_ranktower_samples(log, out, name="ml-subset-prerank", seed=seed, config=CONFIG, threads=1)


@pytest.fixture(scope="module")
def log(ml100k_src) -> InteractionLog:
    return subset_log(ml100k_src)


@pytest.fixture(scope="module")
def built(log, tmp_path_factory):
    out = tmp_path_factory.mktemp("rts") / "data"
    return out, build(log, out)


def all_partitions(out: Path):
    schema = open_dataset(out)
    return schema, [(p, read_partition(out, schema, p)) for p in schema.partitions]


def _start(date: str) -> int:
    return int(np.datetime64(date, "s").astype(np.int64))


def rated_before(log: InteractionLog, cutoff: float) -> set[tuple[int, int]]:
    keep = log.timestamp < cutoff
    return set(zip(log.user[keep].tolist(), log.item[keep].tolist()))


def test_layout_and_hard_labels(built):
    out, res = built
    schema, parts = all_partitions(out)
    assert schema.funnel_positions == FUNNEL_POSITIONS and schema.keep == [CONFIG.keep] and schema.gt_num == S
    assert schema.num_candidates == S + C + R
    assert {p.role for p, _ in parts} == {"train", "valid", "test"}
    assert [p.role for p, _ in parts][-CONFIG.test_weeks :] == ["test"] * CONFIG.test_weeks
    total = 0
    for _, a in parts:
        total += len(a["request_id"])
        stage, mask, label = a["stage"], a["mask"], a["label"]
        assert mask.all()  # MovieLens users always have enough unrated items
        for pos, count in ((IMPRESSION, S), (CANDIDATE, C), (RANDOM, R)):
            assert ((stage == pos).sum(1) == count).all()
        # Sec. 4.2: impressions earn 1 + rating grade (1..5), every other sample 0
        assert (label[stage != IMPRESSION] == 0).all()
        imp = label[stage == IMPRESSION]
        assert imp.size == 0 or (np.isin(imp, [2, 3, 4, 5, 6]).all())
        items = a["item.item_id"]
        assert all(len(set(row)) == len(row) for row in items.tolist())  # no item twice in a request
    assert total == res.schema.provenance["requests"]


def test_hard_labels_are_the_aggregation_formula():
    grade = np.array([[1, 5, 3]])
    want = aggregate_hard_labels({"rating": torch.tensor([[1.0, 5.0, 3.0]])}, {"rating": 0.5}, 2.0).numpy()
    np.testing.assert_allclose(hard_labels(grade, impression_label=2.0, rating_weight=0.5), want)
    np.testing.assert_allclose(want, [[2.5, 4.5, 3.5]])


def test_negatives_are_never_interacted_items(built, log):
    out, _ = built
    schema, parts = all_partitions(out)
    train_cut, valid_cut = (_start(schema.partitions_with_role(role)[0].start) for role in ("valid", "test"))
    seen = {
        "train": rated_before(log, train_cut),
        "valid": rated_before(log, valid_cut),
        "test": rated_before(log, 2**62),
    }
    ever = seen["test"]
    checked = 0
    for part, a in parts:
        users = a["user.user_id"]
        for b in range(len(users)):
            u, items, stage = int(users[b]), a["item.item_id"][b], a["stage"][b]
            impressions = set(items[stage == IMPRESSION].tolist())
            for item in items[stage != IMPRESSION].tolist():
                assert item not in impressions
                assert (u, item) not in seen[part.role], (part.name, u, item)
                checked += 1
            assert all((u, i) in ever for i in impressions)
    assert checked > 1000


def test_candidates_are_the_two_towers_top_allowed_items(built, log):
    out, res = built
    schema, parts = all_partitions(out)
    rated = rated_before(log, 2**62)
    item_table = {"item_id": torch.arange(log.num_items + 1)}
    item_table.update({k: torch.from_numpy(v.values.astype(np.int64)) for k, v in log.item_features.items()})
    compared = 0
    for part, a in parts:
        if part.role != "test" or len(a["request_id"]) == 0:
            continue
        scores = corpus_scores(res.retriever, to_batch(a, schema), item_table).numpy()  # [B, I + 1]
        for b, u in enumerate(a["user.user_id"].tolist()):
            items, stage = a["item.item_id"][b], a["stage"][b]
            blocked = (
                {0} | {i for i in range(1, log.num_items + 1) if (u, i) in rated} | set(items[stage == IMPRESSION])
            )
            allowed = np.array(sorted(set(range(log.num_items + 1)) - blocked))
            best = allowed[np.argsort(-scores[b, allowed], kind="stable")[:C]]
            assert set(items[stage == CANDIDATE].tolist()) == set(best.tolist())
            # and every random sample is an allowed item outside the candidate set
            assert not set(items[stage == RANDOM].tolist()) & (blocked | set(best.tolist()))
            compared += 1
    assert compared > 20


def test_soft_labels_are_the_rankers_predictions(built):
    out, res = built
    schema, parts = all_partitions(out)
    for part, a in parts:
        assert "soft_label" in a and np.isfinite(a["soft_label"]).all()
        if len(a["request_id"]) and part.role != "train":
            with torch.no_grad():
                want = res.ranker(to_batch(a, schema)).numpy()
            np.testing.assert_allclose(a["soft_label"], want, rtol=1e-5, atol=1e-5)
    soft = np.concatenate([a["soft_label"].ravel() for _, a in parts])
    assert soft.std() > 0


def test_same_seed_same_files_other_seed_other_samples(built, log, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build(log, again)
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == sorted(p.name for p in again.glob("*.parquet"))
    for name in files + ["schema.json"]:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "seed1"
    build(log, other, seed=1)
    schema = open_dataset(out)
    part = schema.partitions_with_role("test")[0]
    a, b = read_partition(out, schema, part), read_partition(other, open_dataset(other), part)
    assert not np.array_equal(np.sort(a["item.item_id"], 1), np.sort(b["item.item_id"], 1))


def test_test_weeks_do_not_leak_into_training_samples(built, log, tmp_path):
    """Rewriting every test-week interaction (other items, other ratings) must leave train/valid samples unchanged."""
    out, _ = built
    schema = open_dataset(out)
    test_start = _start(schema.partitions_with_role("test")[0].start)
    late = log.timestamp >= test_start
    assert late.sum() > 100
    rng = np.random.default_rng(7)
    perm = rng.permutation(log.num_items) + 1  # a relabelling of every item id
    changed = InteractionLog(
        user=log.user,
        item=np.where(late, perm[log.item - 1], log.item),
        rating=np.where(late, rng.integers(1, 6, len(log.rating)).astype(float), log.rating),
        timestamp=log.timestamp,
        num_users=log.num_users,
        num_items=log.num_items,
        user_features=log.user_features,
        item_features=log.item_features,
        source="perturbed",
    )
    other = tmp_path / "other"
    build(changed, other)

    def by_request(directory: Path, roles: tuple[str, ...]) -> dict:
        sch = open_dataset(directory)
        rows = {}
        for p in sch.partitions:
            if p.role not in roles:
                continue
            a = read_partition(directory, sch, p)
            for b in range(len(a["request_id"])):
                order = np.argsort(a["item.item_id"][b])
                key = (int(a["user.user_id"][b]), int(a["context.weekday"][b]), p.name, int(a["request_id"][b]))
                rows[key] = (a["item.item_id"][b][order], a["stage"][b][order], a["soft_label"][b][order])
        return rows

    before, after = by_request(out, ("train", "valid")), by_request(other, ("train", "valid"))
    same_impressions = [k for k in before if k in after and _impr(before[k]) == _impr(after[k])]
    assert len(same_impressions) >= 0.95 * len(before)
    for k in same_impressions:
        for x, y in zip(before[k], after[k]):
            np.testing.assert_array_equal(x, y)
    # the perturbation is real: the test weeks differ
    t_before, t_after = by_request(out, ("test",)), by_request(other, ("test",))
    assert any(k not in t_after or not np.array_equal(t_before[k][0], t_after[k][0]) for k in t_before)


def _impr(row) -> set[int]:
    items, stage, _ = row
    return set(items[stage == IMPRESSION].tolist())


def test_fitting_requests_precede_the_training_cutoff(log):
    req = make_requests(log)
    weeks = np.arange(req.week.min(), req.week.max() + 1)
    roles, train_cut, valid_cut = period_cutoffs(weeks, 4, 2)
    assert roles.count("test") == 4 and roles.count("valid") == 2 and train_cut < valid_cut
    assert train_cut == week_start_seconds(weeks[len(weeks) - 6])
    with pytest.raises(ValueError, match="leave no training week"):
        period_cutoffs(weeks[:6], 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(keep=5), "keep=5"),
        (dict(keep=100), "keep=100"),
        (dict(history_fields=("genre",)), "history_fields"),
        (dict(impression_label=-1.0, rating_weight=0.5), "must be positive"),
        (dict(group_size=0), "group_size"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankTowerSamplingConfig(**kwargs)


def test_bad_arguments_are_refused(log, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        build_ranktower_samples(log, tmp_path / "x", name="x", seed=-1)
    with pytest.raises(ValueError, match="lr="):
        FitConfig(lr=0.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        build(log, tmp_path / "busy")

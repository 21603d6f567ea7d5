"""The full-stage cascade dataset: invariants on the real MovieLens-100K build, leakage, determinism, units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.data.store import read_partition
from cascade_ranking.datasets.full_stage import (
    Attribute,
    FullStageConfig,
    FunnelState,
    InteractionLog,
    build_full_stage,
    funnel_state,
    funnel_states,
    make_requests,
    sample_negatives,
    week_of,
    week_start_seconds,
)
from cascade_ranking.datasets.movielens import movielens_log, prepare_movielens, read_movielens

TOP = 3  # two-stage: funnel positions 0..3, impressions at 3
S = 10  # group size = ratings per request = gt_num
L = 50  # history length


# ------------------------------------------------------------------------------------------------------
# fixtures: the raw ratings (pandas, independent of the library) and the built dataset
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw(ml100k_src) -> dict:
    df = pd.read_csv(ml100k_src / "ml-100k.inter", sep="\t")
    df.columns = ["user", "item", "rating", "ts"]
    df = df.sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)
    df["k"] = df.groupby("user").cumcount()
    df["n"] = df.groupby("user")["user"].transform("size")
    rating = np.zeros((944, 1683))
    ts = np.zeros((944, 1683), dtype=np.int64)
    rating[df.user, df.item] = df.rating
    ts[df.user, df.item] = df.ts
    # reference requests: chunks of 10 consecutive ratings, final partial chunk dropped
    starts = df.index[(df.k % S == 0) & (df.k + S <= df.n)].to_numpy()
    chunk_items = df.item.to_numpy()[starts[:, None] + np.arange(S)]
    return {
        "df": df,
        "rating": rating,
        "ts": ts,
        "starts": starts,
        "chunk_user": df.user.to_numpy()[starts],
        "chunk_items": np.sort(chunk_items, axis=1),
        "chunk_time": df.ts.to_numpy()[starts],
        "chunk_k": df.k.to_numpy()[starts],
    }


@pytest.fixture(scope="module")
def built(ml100k_dataset) -> dict:
    schema = DatasetSchema.load(ml100k_dataset)
    parts = [read_partition(ml100k_dataset, schema, p) for p in schema.partitions]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays["partition"] = np.concatenate([np.full(len(p["request_id"]), i) for i, p in enumerate(parts)])
    return {"schema": schema, "a": arrays}


@pytest.fixture(scope="module")
def matched(raw, built) -> np.ndarray:
    """For every dataset row, the index of the reference chunk with the same user and impression set."""
    a = built["a"]
    imp = a["item.item_id"][a["stage"] == TOP].reshape(-1, S)  # row-major: 10 per row
    assert len(imp) == len(a["request_id"])
    imp = np.sort(imp, axis=1)
    ds_keys = np.column_stack([a["user.user_id"], imp])
    ref_keys = np.column_stack([raw["chunk_user"], raw["chunk_items"]])
    assert len(ds_keys) == len(ref_keys)
    ds_order = np.lexsort(ds_keys.T[::-1])
    ref_order = np.lexsort(ref_keys.T[::-1])
    np.testing.assert_array_equal(ds_keys[ds_order], ref_keys[ref_order])
    out = np.empty(len(ds_keys), dtype=np.int64)
    out[ds_order] = ref_order
    return out


@pytest.fixture(scope="module")
def log(ml100k_src) -> InteractionLog:
    return movielens_log(read_movielens(ml100k_src))


# ------------------------------------------------------------------------------------------------------
# invariants of the real build
# ------------------------------------------------------------------------------------------------------
def test_schema_layout(built):
    schema = built["schema"]
    assert schema.name == "movielens-100k-v1-2stage"
    assert schema.num_candidates == 40 and schema.keep == [30, 20] and schema.gt_num == 10
    assert schema.funnel_positions == ["prerank_neg", "coarse_neg", "rank_neg", "rank_pos"]
    assert schema.history_length == L and [h.name for h in schema.history] == ["item_id", "genre"]
    assert [f.name for f in schema.fields_with_role("user")] == ["user_id", "age", "gender", "occupation", "zip"]
    assert [f.name for f in schema.fields_with_role("context")] == ["weekday", "hour"]
    assert [f.name for f in schema.fields_with_role("item")] == ["item_id", "genre", "year"]
    assert schema.train_defaults.batch_size == 256 and schema.train_defaults.passes == 3
    prov = schema.provenance
    assert prov["seed"] == 0 and prov["construction"] == "full-stage-v1"
    assert prov["negative_sources"] == ["cooccurrence", "popularity", "uniform"]
    assert prov["requests"] == 9_596 and prov["ratings_dropped_in_partial_chunks"] == 100_000 - 95_960


def test_partitions_are_weeks_with_roles(built, raw, matched):
    parts = built["schema"].partitions
    assert len(parts) == 32
    starts = pd.to_datetime([p.start for p in parts])
    assert (starts.day_of_week == 0).all() and (np.diff(starts.values) == np.timedelta64(7, "D")).all()
    assert [p.start for p in parts[:1] + parts[-6:-4] + parts[-4:]] == [
        "1997-09-15", "1998-03-16", "1998-03-23", "1998-03-30", "1998-04-06", "1998-04-13", "1998-04-20",
    ]  # fmt: skip
    assert all(pd.Timestamp(p.end) - pd.Timestamp(p.start) == pd.Timedelta(days=6) for p in parts)
    assert [p.role for p in parts] == ["train"] * 26 + ["valid"] * 2 + ["test"] * 4
    count = {r: sum(p.num_requests for p in parts if p.role == r) for r in ("train", "valid", "test")}
    assert count == {"train": 7_962, "valid": 410, "test": 1_224}
    # every request's time (= its first rating's timestamp) lies in its partition's week (UTC)
    a = built["a"]
    t = pd.to_datetime(raw["chunk_time"][matched], unit="s")
    lo = pd.to_datetime([parts[i].start for i in a["partition"]])
    assert ((t >= lo) & (t < lo + pd.Timedelta(days=7))).all()
    # rows are in time order, request ids number them
    assert (np.diff(raw["chunk_time"][matched]) >= 0).all()
    np.testing.assert_array_equal(a["request_id"], np.arange(len(a["request_id"])))


def test_impressions_are_the_users_consecutive_ratings(raw, matched, built):
    """``matched`` already proved the (user, impression set) multisets equal; check order and labels."""
    a = built["a"]
    imp = a["stage"] == TOP
    users = np.broadcast_to(a["user.user_id"][:, None], imp.shape)
    # impressions are rated by the user, with label = top position + rating (ratings are 1..5)
    ratings = raw["rating"][users, a["item.item_id"]]
    assert (ratings[imp] > 0).all()
    np.testing.assert_array_equal(a["label"][imp], TOP + ratings[imp])
    # and they are consecutive in the user's time order: positions k0 .. k0 + 9
    df = raw["df"]
    pos = np.zeros((944, 1683), dtype=np.int64)
    pos[df.user, df.item] = df.k
    k = np.sort(pos[users, a["item.item_id"]][imp].reshape(-1, S), axis=1)
    np.testing.assert_array_equal(k, raw["chunk_k"][matched][:, None] + np.arange(S))


def test_negatives_never_rated_and_items_unique(raw, built):
    a = built["a"]
    assert a["mask"].all()
    neg = a["stage"] < TOP
    users = np.broadcast_to(a["user.user_id"][:, None], neg.shape)
    assert (raw["rating"][users, a["item.item_id"]][neg] == 0).all()
    assert (a["item.item_id"] > 0).all()
    srt = np.sort(a["item.item_id"], axis=1)
    assert (np.diff(srt, axis=1) > 0).all()


def test_funnel_positions_and_labels(built):
    a = built["a"]
    for p in range(TOP + 1):
        assert ((a["stage"] == p).sum(axis=1) == S).all()
    neg = a["stage"] < TOP
    np.testing.assert_array_equal(a["label"][neg], a["stage"][neg] + 1)
    assert a["label"].dtype == np.float32
    # ground truth = top 10 by label = the impressions, strictly above every negative
    assert (
        np.where(a["stage"] == TOP, a["label"], np.inf).min(axis=1) > np.where(neg, a["label"], -1).max(axis=1)
    ).all()
    # slots are in random order: impressions spread evenly over slots, not first
    share = (a["stage"] == TOP).mean(axis=0)
    assert np.abs(share - 0.25).max() < 0.05


def test_history_is_the_previous_50_ratings(raw, built, matched):
    a = built["a"]
    items = raw["df"].item.to_numpy()
    first = raw["starts"][matched]
    k0 = raw["chunk_k"][matched]
    back = np.arange(1, L + 1)
    want = np.where(k0[:, None] - back >= 0, items[np.maximum(first[:, None] - back, 0)], 0)
    np.testing.assert_array_equal(a["history.item_id"], want)
    hist = a["history.item_id"]
    valid = hist > 0
    np.testing.assert_array_equal(valid.sum(axis=1), np.minimum(k0, L))
    assert (valid[:, :-1] >= valid[:, 1:]).all()  # left-aligned
    users = np.broadcast_to(a["user.user_id"][:, None], hist.shape)
    times = raw["ts"][users, hist]
    assert (raw["rating"][users, hist][valid] > 0).all()
    assert (times[valid] <= np.broadcast_to(raw["chunk_time"][matched][:, None], hist.shape)[valid]).all()
    assert (np.diff(np.where(valid, times, 0), axis=1)[valid[:, 1:]] <= 0).all()  # most recent first


def test_features_match_the_tables(built, raw, matched, log):
    a = built["a"]
    for name in ("genre", "year"):
        np.testing.assert_array_equal(a[f"item.{name}"], log.item_features[name].values[a["item.item_id"]])
    np.testing.assert_array_equal(a["history.genre"], log.item_features["genre"].values[a["history.item_id"]])
    assert (a["history.genre"][a["history.item_id"] == 0] == 0).all()
    for name in ("age", "gender", "occupation", "zip"):
        np.testing.assert_array_equal(a[f"user.{name}"], log.user_features[name].values[a["user.user_id"]])
    t = pd.to_datetime(raw["chunk_time"][matched], unit="s", utc=True)
    np.testing.assert_array_equal(a["context.weekday"], t.day_of_week + 1)
    np.testing.assert_array_equal(a["context.hour"], t.hour + 1)


def test_cooccurrence_group_is_the_top_by_past_cooccurrence(built, raw):
    """Position 2 holds, for each request, the unrated items with the largest (co-occurrence, popularity)
    computed from interactions before the request's week only (checked for the first test week)."""
    a, schema = built["a"], built["schema"]
    idx = next(i for i, p in enumerate(schema.partitions) if p.role == "test")
    rows = a["partition"] == idx
    cutoff = pd.Timestamp(schema.partitions[idx].start, tz="UTC").timestamp()
    df = raw["df"]
    past = df[df.ts < cutoff]
    x = np.zeros((944, 1683))
    x[past.user, past.item] = 1
    cooc = x.T @ x
    pop = x.sum(axis=0)
    h = np.zeros((rows.sum(), 1683))
    hist = a["history.item_id"][rows]
    np.put_along_axis(h, hist, 1.0, axis=1)
    h[:, 0] = 0
    key = (h @ cooc) * (pop.max() + 1) + pop
    users = a["user.user_id"][rows]
    eligible = raw["rating"][users] == 0
    eligible[:, 0] = False
    chosen = np.zeros_like(eligible)
    np.put_along_axis(chosen, np.where(a["stage"][rows] == 2, a["item.item_id"][rows], 0), True, axis=1)
    chosen[:, 0] = False
    assert (chosen.sum(axis=1) == S).all()
    assert (np.where(chosen, key, np.inf).min(axis=1) >= np.where(eligible & ~chosen, key, -np.inf).max(axis=1)).all()
    # the popularity-proportional group is more popular than the uniform one
    items = a["item.item_id"][rows]
    assert pop[items[a["stage"][rows] == 1]].mean() > 2 * pop[items[a["stage"][rows] == 0]].mean()


# ------------------------------------------------------------------------------------------------------
# leakage: the negatives of week w depend only on weeks before w
# ------------------------------------------------------------------------------------------------------
def test_week_negatives_unchanged_when_future_interactions_are_removed(log, built, ml100k_dataset, tmp_path):
    schema, a = built["schema"], built["a"]
    idx = next(i for i, p in enumerate(schema.partitions) if p.start == "1997-11-10")  # a busy train week
    week_users = np.unique(a["user.user_id"][a["partition"] == idx])
    cutoff = week_start_seconds(int(week_of(np.array([pd.Timestamp("1997-11-10", tz="UTC").timestamp()]))[0]))
    # remove every interaction from week w on, except those of the users with a request in week w
    # (their own ratings define the week's impressions, histories and exclusion sets)
    drop = (log.timestamp >= cutoff) & ~np.isin(log.user, week_users)
    assert drop.sum() > 50_000
    pruned = log.select(~drop)
    config = FullStageConfig(stages=2, history_fields=("item_id", "genre"))
    out = build_full_stage(pruned, tmp_path / "pruned", name="pruned", seed=0, config=config)
    part = next(p for p in out.partitions if p.start == "1997-11-10")
    got = read_partition(tmp_path / "pruned", out, part)
    want = read_partition(ml100k_dataset, schema, schema.partitions[idx])
    assert set(got) == set(want)
    for k in want:  # request ids number all requests, and pruning drops some chunks of earlier weeks
        if k != "request_id":
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the removed interactions do move the funnel's models of later weeks: the check above has teeth
    later = cutoff + 7 * 86_400
    assert not np.array_equal(funnel_state(pruned, later).popularity, funnel_state(log, later).popularity)


def test_funnel_states_incremental_equal_from_scratch_on_the_past(log):
    weeks = [int(w) for w in np.unique(week_of(log.timestamp))]
    picked = {weeks[1], weeks[5], weeks[20], weeks[-1]}
    for week, state in zip(weeks, funnel_states(log, weeks)):
        cutoff = week_start_seconds(week)
        assert state.cutoff == cutoff
        if week == weeks[0]:  # nothing before the first week
            assert not state.popularity.any() and not state.cooccurrence.any()
        if week not in picked:
            continue
        past = funnel_state(log.select(log.timestamp < cutoff), cutoff)
        np.testing.assert_array_equal(state.popularity, past.popularity)
        np.testing.assert_array_equal(state.cooccurrence, past.cooccurrence)
        np.testing.assert_array_equal(state.popularity, np.bincount(log.item[log.timestamp < cutoff], minlength=1683))


# ------------------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files(ml100k_src, ml100k_dataset, tmp_path):
    prepare_movielens(tmp_path / "again", src=ml100k_src, stages=2, seed=0)
    names = sorted(p.name for p in ml100k_dataset.iterdir())
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == names
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (ml100k_dataset / name).read_bytes(), name


def test_other_seed_changes_negatives_not_impressions(ml100k_src, built, tmp_path):
    schema = prepare_movielens(tmp_path / "seed1", src=ml100k_src, stages=2, seed=1)
    assert schema.provenance["seed"] == 1
    parts = [read_partition(tmp_path / "seed1", schema, p) for p in schema.partitions]
    b = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    a = built["a"]
    np.testing.assert_array_equal(b["user.user_id"], a["user.user_id"])
    np.testing.assert_array_equal(b["history.item_id"], a["history.item_id"])

    def group(x, p):
        return np.sort(x["item.item_id"][x["stage"] == p].reshape(-1, S), axis=1)

    np.testing.assert_array_equal(group(b, TOP), group(a, TOP))
    assert (group(b, 1) != group(a, 1)).any(axis=1).mean() > 0.9  # popularity-proportional draws
    assert (group(b, 0) != group(a, 0)).any(axis=1).mean() > 0.9  # uniform draws
    assert not np.array_equal(b["stage"], a["stage"])  # slot order


# ------------------------------------------------------------------------------------------------------
# units on small hand-made logs
# ------------------------------------------------------------------------------------------------------
DAY = 86_400
MONDAY = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday


def _toy_log(user, item, ts, rating=None, num_users=None, num_items=None, **kw) -> InteractionLog:
    user, item, ts = (np.asarray(x, dtype=np.int64) for x in (user, item, ts))
    rating = np.ones(len(user)) if rating is None else np.asarray(rating, dtype=np.float64)
    return InteractionLog(
        user=user,
        item=item,
        rating=rating,
        timestamp=ts,
        num_users=num_users or int(user.max()),
        num_items=num_items or int(item.max()),
        **kw,
    )


def test_week_arithmetic():
    assert week_start_seconds(int(week_of(np.array([MONDAY]))[0])) == MONDAY
    np.testing.assert_array_equal(
        week_of(np.array([MONDAY - 1, MONDAY, MONDAY + 7 * DAY - 1])) - week_of(np.array([MONDAY])), [-1, 0, 0]
    )


def test_make_requests_by_hand():
    # user 1: 23 ratings at distinct times (one tie at t=5, broken by item id) -> 2 requests, 3 dropped
    # user 2: 7 ratings -> no request
    items1 = np.arange(30, 7, -1)  # 23 items, 30..8
    ts1 = MONDAY + np.arange(23)
    ts1[5] = ts1[4]  # items 26 and 25 share a timestamp: item 25 comes first
    log = _toy_log(
        np.r_[np.ones(23), np.full(7, 2)],
        np.r_[items1, np.arange(1, 8)],
        np.r_[ts1, MONDAY + np.arange(7)],
        rating=np.r_[np.tile([0.5, 1.5, 4.0], 8)[:23], np.ones(7)],
    )
    req = make_requests(log, group_size=10, history_length=12)
    order1 = [30, 29, 28, 27, 25, 26, *range(24, 7, -1)]  # time order of user 1's items
    np.testing.assert_array_equal(req.user, [1, 1])
    np.testing.assert_array_equal(req.chunk, [0, 1])
    np.testing.assert_array_equal(req.items, [order1[:10], order1[10:20]])
    np.testing.assert_array_equal(req.time, [MONDAY, MONDAY + 10])
    assert req.dropped == 3 + 7
    np.testing.assert_array_equal(req.history[0], np.zeros(12))
    np.testing.assert_array_equal(req.history[1], order1[9::-1] + [0, 0])  # most recent first
    # grades: distinct ratings 0.5 < 1 < 1.5 < 4 -> 1..4 (user 2's 1.0 counts as a value)
    r = dict(zip(items1.tolist(), np.tile([0.5, 1.5, 4.0], 8)[:23].tolist()))
    grade = {0.5: 1, 1.5: 3, 4.0: 4}
    np.testing.assert_array_equal(req.grade[0], [grade[r[i]] for i in order1[:10]])


def test_repeated_pairs_keep_the_earliest_rating():
    log = _toy_log([1, 1, 1], [5, 6, 5], [MONDAY + 9, MONDAY + 1, MONDAY + 2], rating=[1.0, 2.0, 3.0])
    req = make_requests(log, group_size=2, history_length=1)
    np.testing.assert_array_equal(req.items, [[6, 5]])
    np.testing.assert_array_equal(req.grade, [[1, 2]])  # item 5 keeps its earlier rating 3.0 (> 2.0 of item 6)
    assert req.dropped == 0


def test_gumbel_popularity_source_is_proportional():
    pop = np.array([0, 0, 9, 29, 59])  # weights count + 1: items 1..4 -> 1, 10, 30, 60
    state = FunnelState(cutoff=0, popularity=pop, cooccurrence=np.zeros((5, 5), np.float32))
    n = 40_000
    rated = sp.csr_matrix((n + 1, 5), dtype=bool)
    items, valid = sample_negatives(
        np.arange(1, n + 1), np.zeros((n, 1), np.int64), state, rated, ["popularity"], 1, np.random.default_rng(0)
    )
    assert valid.all()
    freq = np.bincount(items[:, 0], minlength=5)[1:] / n
    np.testing.assert_allclose(freq, np.array([1, 10, 30, 60]) / 101, atol=0.01)


def test_sources_skip_rated_and_chosen_items_and_mask_when_exhausted():
    # 6 items; user 1 rated items 1 and 2 -> only 4 unrated items for 2 groups of 3
    cooc = np.zeros((7, 7), np.float32)
    cooc[1, 5] = cooc[5, 1] = 3
    cooc[1, 6] = cooc[6, 1] = 1
    state = FunnelState(cutoff=0, popularity=np.array([0, 5, 5, 1, 9, 0, 0]), cooccurrence=cooc)
    rated = sp.csr_matrix(np.array([[0] * 7, [0, 1, 1, 0, 0, 0, 0]], dtype=bool))
    items, valid = sample_negatives(
        np.array([1]), np.array([[1, 0]]), state, rated, ["cooccurrence", "uniform"], 3, np.random.default_rng(0)
    )
    # co-occurrence with history {1}: 5 (3), 6 (1), then ties at 0 broken by popularity: 4 (9)
    np.testing.assert_array_equal(items[0, :3], [5, 6, 4])
    np.testing.assert_array_equal(valid[0], [True, True, True, True, False, False])
    assert items[0, 3] == 3 and (items[0, 4:] == 0).all()


def _multiweek_log() -> InteractionLog:
    rng = np.random.default_rng(3)
    n_users, n_items, per_user = 12, 80, 40
    user = np.repeat(np.arange(1, n_users + 1), per_user)
    item = np.concatenate([rng.choice(np.arange(1, n_items + 1), per_user, replace=False) for _ in range(n_users)])
    ts = MONDAY + rng.integers(0, 6 * 7 * DAY, len(user))
    genre = Attribute(np.r_[0, rng.integers(1, 4, n_items)], 4, "toy genre")
    return _toy_log(user, item, ts, rating=rng.integers(1, 6, len(user)), num_items=n_items,
                    item_features={"genre": genre})  # fmt: skip


def test_three_stage_layout(tmp_path):
    log = _multiweek_log()
    config = FullStageConfig(stages=3, history_fields=("item_id", "genre"), test_weeks=1, valid_weeks=1)
    schema = build_full_stage(log, tmp_path / "d", name="toy-3stage", seed=0, config=config)
    assert schema.num_candidates == 50 and schema.keep == [40, 30, 20] and schema.gt_num == 10
    assert schema.funnel_positions == ["prerank_neg", "coarse_neg", "rank_neg", "rerank_neg", "rerank_pos"]
    assert [p.role for p in schema.partitions][-2:] == ["valid", "test"]
    a = [read_partition(tmp_path / "d", schema, p) for p in schema.partitions]
    a = {k: np.concatenate([x[k] for x in a]) for k in a[0]}
    assert len(a["request_id"]) == 12 * 4
    for p in range(5):
        assert ((a["stage"] == p).sum(axis=1) == 10).all()
    neg = a["stage"] < 4
    np.testing.assert_array_equal(a["label"][neg], a["stage"][neg] + 1)
    assert (a["label"][~neg] >= 5).all() and (a["label"][~neg] <= 9).all()


def test_exhausted_users_get_masked_slots(tmp_path):
    # 2 users rating 12 of 14 items, two weeks apart (the middle week is empty): 2 unrated items for 30
    # negative slots
    user = np.repeat([1, 2], 12)
    item = np.r_[np.arange(1, 13), np.arange(3, 15)]
    ts = MONDAY + np.r_[np.arange(12), 14 * DAY + np.arange(12)]
    log = _toy_log(user, item, ts, num_items=14)
    config = FullStageConfig(stages=2, test_weeks=1, valid_weeks=1)
    schema = build_full_stage(log, tmp_path / "d", name="toy", seed=0, config=config)
    a = [read_partition(tmp_path / "d", schema, p) for p in schema.partitions]
    a = {k: np.concatenate([x[k] for x in a]) for k in a[0]}
    assert [p.num_requests for p in schema.partitions] == [1, 0, 1]
    np.testing.assert_array_equal(a["mask"].sum(axis=1), [12, 12])
    assert (a["item.item_id"][~a["mask"]] == 0).all() and (a["label"][~a["mask"]] == 0).all()
    assert (a["stage"][~a["mask"]] == 0).all()


def test_bad_arguments_are_named(tmp_path):
    log = _multiweek_log()
    with pytest.raises(ValueError, match="stages=4"):
        FullStageConfig(stages=4)
    with pytest.raises(ValueError, match="negative_sources"):
        FullStageConfig(negative_sources=("uniform", "uniform"))
    with pytest.raises(ValueError, match="negative_sources"):
        FullStageConfig(negative_sources=("popular", "uniform", "uniform"))
    with pytest.raises(ValueError, match="history_fields"):
        FullStageConfig(history_fields=("genre",))
    with pytest.raises(ValueError, match="seed=-1"):
        build_full_stage(log, tmp_path / "x", name="x", seed=-1)
    with pytest.raises(ValueError, match="history_fields"):
        build_full_stage(log, tmp_path / "x", name="x", config=FullStageConfig(history_fields=("item_id", "year")))
    with pytest.raises(ValueError, match="leave no training week"):
        build_full_stage(log, tmp_path / "x", name="x", config=FullStageConfig(test_weeks=5, valid_weeks=2))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="out_dir"):
        build_full_stage(log, tmp_path / "other", name="x", config=FullStageConfig(test_weeks=1, valid_weeks=1))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="'item' ids"):
        _toy_log([1], [3], [0], num_items=2)
    with pytest.raises(ValueError, match="item_features\\['g'\\]"):
        _toy_log([1], [1], [0], item_features={"g": Attribute(np.array([0, 5]), 3)})


def test_rebuild_replaces_an_existing_dataset(tmp_path):
    log = _multiweek_log()
    config = FullStageConfig(stages=2, test_weeks=1, valid_weeks=1)
    first = build_full_stage(log, tmp_path / "d", name="toy", seed=0, config=config)
    second = build_full_stage(log, tmp_path / "d", name="toy", seed=1, config=config)
    assert DatasetSchema.load(tmp_path / "d").provenance["seed"] == 1
    assert {p.name for p in first.partitions} == {p.name for p in second.partitions}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d"]  # no temporary folders left

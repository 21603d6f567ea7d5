"""The funnel simulator: determinism, the funnel's structure, and both output layouts."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.feather as feather
import pytest

from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.recflow import FLOW_COLUMNS, FLOWS, SEQ_COLUMNS, read_id_cnt
from cascade_ranking.datasets.synthetic import SimulatorConfig, build_world, simulate, simulate_days, small_config

CONFIG = small_config()
DISJOINT = ("rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg")  # depth 4 ... 0


@pytest.fixture(scope="module")
def days():
    return list(simulate_days(requests=120, days=2, seed=3, config=CONFIG))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["store", "recflow"])
def test_same_seed_gives_identical_files(tmp_path, layout):
    kw = dict(requests=60, days=2, layout=layout, config=CONFIG)
    simulate(tmp_path / "a", seed=5, **kw)
    simulate(tmp_path / "b", seed=5, **kw)
    simulate(tmp_path / "c", seed=6, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_flows_follow_the_funnel(days):
    keep = CONFIG.stage_keep
    lo, hi = CONFIG.flow_size
    for day in days:
        video = {f: day.flow_items[f][:, :, FLOW_COLUMNS.index("video_id")] for f in FLOWS}
        for i in range(day.num_requests):
            got = {f: video[f][i, : day.flow_counts[f][i]].tolist() for f in FLOWS}
            for f in FLOWS:
                assert len(set(got[f])) == len(got[f]), f  # no repeats within a flow
                assert not video[f][i, day.flow_counts[f][i] :].any()  # padded rows are zero
            seen = [v for f in DISJOINT for v in got[f]]
            assert len(set(seen)) == len(seen)  # a video has one funnel position
            for f in ("rank_neg", "coarse_neg", "prerank_neg", "rank_pos"):
                assert lo <= len(got[f]) <= hi, f  # enough of each group exists in a pool of 200
            assert lo <= len(got["rerank_pos"]) <= keep[3]  # the rerank stage shows keep[3] items
            rank, rerank, n = day.flow_rank_index, day.flow_rerank_index, day.flow_counts
            assert (0 <= rank["rank_pos"][i, : n["rank_pos"][i]]).all()
            assert (rank["rank_pos"][i, : n["rank_pos"][i]] < keep[2]).all()
            assert (rank["rank_neg"][i, : n["rank_neg"][i]] == -1).all()
            assert (rank["rerank_neg"][i, : n["rerank_neg"][i]] >= 0).all()  # passed rank, stopped at rerank
            assert (rerank["rerank_neg"][i, : n["rerank_neg"][i]] == -1).all()
            assert (rerank["rerank_pos"][i, : n["rerank_pos"][i]] < keep[3]).all()
            shown = rerank["realshow"][i, : n["realshow"][i]].tolist()
            assert shown == list(range(len(shown)))  # realshow = the first items shown, in shown order


def test_deeper_funnel_positions_hold_more_relevant_items(days):
    world = build_world(CONFIG, 3)
    mean = {}
    for f in DISJOINT:
        scores = []
        for day in days:
            users = day.user["user_id"]
            for i in range(day.num_requests):
                vids = day.flow_items[f][i, : day.flow_counts[f][i], 0]
                scores.extend(world.item_factor[vids] @ world.user_factor[users[i]])
        mean[f] = float(np.mean(scores))
    ordered = [mean[f] for f in DISJOINT]
    assert ordered == sorted(ordered, reverse=True), mean


def test_history_is_left_padded_oldest_first_and_before_the_request(days):
    ts_col = SEQ_COLUMNS.index("request_timestamp")
    for day in days:
        ts = day.history[:, :, ts_col]
        valid = ts > 0
        n_valid = valid.sum(axis=1)
        assert n_valid.min() < CONFIG.history_length // 4 and n_valid.max() > CONFIG.history_length // 2
        expected = np.arange(CONFIG.history_length)[None, :] >= (CONFIG.history_length - n_valid)[:, None]
        np.testing.assert_array_equal(valid, expected)
        assert not day.history[~valid].any()
        assert (np.diff(np.where(valid, ts, 0), axis=1)[valid[:, 1:] & valid[:, :-1]] >= 0).all()
        assert (np.where(valid, ts, 0).max(axis=1) < day.request_timestamp).all()


def test_recflow_layout_files(tmp_path, days):
    out = tmp_path / "raw"
    simulate(out, requests=120, days=2, layout="recflow", seed=3, config=CONFIG)
    assert sorted(p.name for p in (out / "all_stage").iterdir()) == [f"{d.name}.feather" for d in days]
    counts = read_id_cnt(out / "others" / "id_cnt.pkl")
    assert counts == CONFIG.canonical_id_cnt()
    day = days[0]
    requests = pickle.loads((out / "request_id_dict" / f"{day.name}.pkl").read_bytes())
    history = pickle.loads((out / "seq_effective_50_dict" / f"{day.name}.pkl").read_bytes())
    assert list(requests) == day.request_id.tolist() == list(history)
    for i, rid in enumerate(day.request_id.tolist()):
        for f in FLOWS:
            rows = requests[rid].get(f, np.zeros((0, 8), np.int64))
            assert rows.dtype == np.int64 and rows.shape == (day.flow_counts[f][i], 8)
            np.testing.assert_array_equal(rows, day.flow_items[f][i, : len(rows)])
        assert history[rid].shape == (CONFIG.history_length, 10)
    table = feather.read_table(out / "all_stage" / f"{day.name}.feather").to_pydict()
    rows = list(zip(table["request_id"], table["video_id"]))
    assert len(rows) == len(set(rows))  # one row per (request, video)
    for key in ("rank_pos", "rerank_pos"):
        index = "rank_index" if key == "rank_pos" else "rerank_index"
        assert all((flag == 1) == (idx >= 0) for flag, idx in zip(table[key], table[index]))
    depth = np.array([table[f] for f in DISJOINT]).sum(axis=0)
    assert (depth == 1).all()  # exactly one disjoint funnel position per row
    recorded = {(rid, int(v)) for i, rid in enumerate(day.request_id.tolist()) for f in FLOWS
                for v in day.flow_items[f][i, : day.flow_counts[f][i], 0]}  # fmt: skip
    assert set(rows) == recorded


def test_store_layout(tmp_path):
    schema = simulate(tmp_path / "s", requests=100, days=4, stages=3, seed=1, config=CONFIG, valid_days=1)
    assert schema == open_dataset(tmp_path / "s")
    assert schema.name == "synthetic-3stage" and schema.num_candidates == 50 and schema.keep == [40, 30, 20]
    assert [p.role for p in schema.partitions] == ["train", "train", "valid", "test"]
    assert sum(p.num_requests for p in schema.partitions) == 100
    arrays = read_partition(tmp_path / "s", schema, schema.partitions[0])
    stage, label, mask = arrays["stage"], arrays["label"], arrays["mask"]
    top = mask & (stage == 4)
    assert ((label[top] >= 21) & (label[top] <= 30)).all()  # 30 - rerank_index, rerank keeps 10
    for position, value in zip([3, 2, 1, 0], [8, 7, 6, 5]):
        assert (label[mask & (stage == position)] == value).all()
    assert mask.sum(axis=1).min() >= 5 * CONFIG.flow_size[0] - 2  # few padded slots
    assert 0.7 < mask.mean() < 1.0  # but some (flows shorter than 10 exist)


def test_store_layout_simulated_in_chunks_equals_converting_the_recflow_layout(tmp_path):
    from cascade_ranking.datasets.recflow import convert_recflow

    config = replace(CONFIG, chunk_size=7)  # several chunks per day
    kw = dict(requests=40, days=2, seed=9, config=config)
    direct = simulate(tmp_path / "direct", stages=2, **kw)
    simulate(tmp_path / "raw", layout="recflow", **kw)
    converted = convert_recflow(tmp_path / "raw", tmp_path / "converted", stages=2)
    for part in direct.partitions:
        a = read_partition(tmp_path / "direct", direct, part)
        b = read_partition(tmp_path / "converted", converted, part)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_chunking_keeps_the_funnel_valid(tmp_path):
    config = replace(CONFIG, chunk_size=7)
    (day,) = simulate_days(requests=30, days=1, seed=0, config=config)
    assert day.num_requests == 30
    for f in FLOWS:
        assert (day.flow_counts[f] <= CONFIG.flow_size[1]).all()
    assert (np.diff(day.request_timestamp) >= 0).all()
    assert len(np.unique(day.request_id)) == 30


def test_config_scales_with_requests_and_validates():
    big, small = SimulatorConfig.for_requests(10_000_000), SimulatorConfig.for_requests(1_000)
    assert big.num_users > small.num_users and big.num_items > small.num_items
    with pytest.raises(ValueError, match="stage_keep"):
        SimulatorConfig(stage_keep=(100, 100, 20, 10))
    with pytest.raises(ValueError, match="flow_size"):
        SimulatorConfig(flow_size=(0, 10))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout='parquet'"):
        simulate(tmp_path / "x", requests=10, days=1, layout="parquet")
    with pytest.raises(ValueError, match="requests=2, days=3"):
        simulate(tmp_path / "x", requests=2, days=3)
    with pytest.raises(ValueError, match="stages=5"):
        simulate(tmp_path / "x", requests=10, days=1, stages=5)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="not a previous output"):
        simulate(other, requests=10, days=1, config=CONFIG)
    assert not (tmp_path / "x").exists()

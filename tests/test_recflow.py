"""The RecFlow converter, on RecFlow files written by the funnel simulator (checked against its ground truth)."""

from __future__ import annotations

import logging
import pickle
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.recflow import (
    FLOW_COLUMNS,
    SEQ_COLUMNS,
    RecFlowFormatError,
    convert_recflow,
    list_days,
    parse_days,
    read_id_cnt,
    utc_time_fields,
)
from cascade_ranking.datasets.synthetic import simulate, simulate_days, small_config

REQUESTS, DAYS, SEED = 90, 3, 7
CONFIG = small_config()
GROUPS = {
    2: ["rank_pos", "rank_neg", "coarse_neg", "prerank_neg"],
    3: ["rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"],
}
LOWER_LABELS = {2: [7.0, 6.0, 5.0], 3: [8.0, 7.0, 6.0, 5.0]}
ID_FIELDS = {"video_id": 0, "author_id": 1, "cate_two": 3, "upload_type": 4, "cate_one": 6}
HISTORY_IDS = {"video_id": 0, "author_id": 1, "cate_two": 2, "cate_one": 3, "upload_type": 4}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Three simulated days in RecFlow's published layout (read-only: copy before corrupting)."""
    out = tmp_path_factory.mktemp("recflow") / "raw"
    assert simulate(out, requests=REQUESTS, days=DAYS, layout="recflow", seed=SEED, config=CONFIG) is None
    return out


@pytest.fixture(scope="module")
def truth():
    return list(simulate_days(requests=REQUESTS, days=DAYS, seed=SEED, config=CONFIG))


@pytest.fixture
def raw_copy(raw, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(raw, dst)
    return dst


def _utc(seconds: int) -> tuple[int, int, int]:
    t = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return t.weekday() + 1, t.hour + 1, t.minute + 1


def _expected_candidates(day, i: int, stages: int) -> list[tuple]:
    """The valid candidates of request ``i`` as (stage, label, video, author, cate_two, cate_one, upload_type,
    upload weekday, hour, minute), computed one by one from the simulator's ground truth."""
    groups = GROUPS[stages]
    rows = []
    for g, flow in enumerate(groups):
        ranks = day.flow_rank_index[flow] if stages == 2 else day.flow_rerank_index[flow]
        for j in range(min(int(day.flow_counts[flow][i]), 10)):
            item = day.flow_items[flow][i, j]
            label = 30.0 - ranks[i, j] if g == 0 else LOWER_LABELS[stages][g - 1]
            ids = tuple(int(item[c]) + 1 for c in ID_FIELDS.values())
            rows.append((len(groups) - 1 - g, label, *ids, *_utc(int(item[5]))))
    return sorted(rows)


def _stored_candidates(arrays: dict, i: int) -> list[tuple]:
    valid = arrays["mask"][i]
    cols = [arrays["stage"][i], arrays["label"][i]]
    cols += [arrays[f"item.{f}"][i] for f in ID_FIELDS]
    cols += [arrays[f"item.upload_{f}"][i] for f in ("weekday", "hour", "minute")]
    return sorted(tuple(c[j].item() for c in cols) for j in np.flatnonzero(valid))


@pytest.mark.parametrize("stages", [2, 3])
def test_conversion_matches_the_simulators_ground_truth(raw, truth, tmp_path, stages):
    out = tmp_path / f"store{stages}"
    schema = convert_recflow(raw, out, stages=stages, test_days=1, valid_days=1)
    assert schema == open_dataset(out)
    n = 10 * len(GROUPS[stages])
    assert schema.num_candidates == n and schema.history_length == CONFIG.history_length
    assert schema.funnel_positions == GROUPS[stages][::-1]
    assert schema.keep == ([30, 20] if stages == 2 else [40, 30, 20]) and schema.gt_num == 10
    assert [(p.name, p.role, p.num_requests) for p in schema.partitions] == [
        (d.name, role, d.num_requests) for d, role in zip(truth, ["train", "valid", "test"])
    ]
    assert schema.train_defaults.batch_size == 1024 and schema.train_defaults.passes == 1
    counts = CONFIG.canonical_id_cnt()
    for f in schema.features:
        if f.name in counts:
            assert f.vocab_size == counts[f.name] + 2, f.name
    for part, day in zip(schema.partitions, truth):
        arrays = read_partition(out, schema, part)
        assert arrays["request_id"].tolist() == day.request_id.tolist()
        for i in range(day.num_requests):
            for f, values in day.user.items():
                assert arrays[f"user.{f}"][i] == values[i] + 1, f
            when = _utc(int(day.request_timestamp[i]) // 1000)
            got = tuple(arrays[f"context.{f}"][i] for f in ("weekday", "hour", "minute"))
            assert got == when
            assert _stored_candidates(arrays, i) == _expected_candidates(day, i, stages)
            padded = ~arrays["mask"][i]
            for name in ("stage", "label", *(f"item.{f}" for f in ID_FIELDS)):
                assert not arrays[name][i][padded].any(), name
            hist = day.history[i]
            valid = hist[:, SEQ_COLUMNS.index("request_timestamp")] > 0
            for f, c in HISTORY_IDS.items():
                assert arrays[f"history.{f}"][i].tolist() == [
                    int(v) + 1 if ok else 0 for v, ok in zip(hist[:, c], valid)
                ]


@pytest.mark.parametrize("stages", [2, 3])
def test_store_layout_of_the_simulator_equals_converting_its_recflow_files(raw, tmp_path, stages):
    direct = simulate(tmp_path / "direct", requests=REQUESTS, days=DAYS, stages=stages, seed=SEED, config=CONFIG)
    converted = convert_recflow(raw, tmp_path / "converted", stages=stages)
    assert direct.features == converted.features and direct.partitions == converted.partitions
    for part in direct.partitions:
        a = read_partition(tmp_path / "direct", direct, part)
        b = read_partition(tmp_path / "converted", converted, part)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_both_id_cnt_key_spellings_give_the_same_dataset(raw_copy, tmp_path):
    path = raw_copy / "others" / "id_cnt.pkl"
    plain = read_id_cnt(path)
    original = convert_recflow(raw_copy, tmp_path / "a")
    counts = pickle.loads(path.read_bytes())
    counts["photo_id"] = counts.pop("video_id")
    counts[" category_level_two"] = counts.pop("category_level_two")
    path.write_bytes(pickle.dumps(counts))
    assert read_id_cnt(path) == plain
    respelled = convert_recflow(raw_copy, tmp_path / "b")
    assert respelled.features == original.features


def test_missing_id_cnt_key_is_named(raw_copy, tmp_path):
    path = raw_copy / "others" / "id_cnt.pkl"
    counts = pickle.loads(path.read_bytes())
    del counts["author_id"], counts["category_level_two"]
    path.write_bytes(pickle.dumps(counts))
    with pytest.raises(RecFlowFormatError, match=r"id_cnt\.pkl.*'author_id'.*'category_level_two'"):
        convert_recflow(raw_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_day_file_is_named_and_nothing_is_written(raw_copy, tmp_path):
    day = list_days(raw_copy)[1]
    (raw_copy / "seq_effective_50_dict" / f"{day}.pkl").unlink()
    with pytest.raises(RecFlowFormatError, match=rf"seq_effective_50_dict/{day}\.pkl.*missing"):
        convert_recflow(raw_copy, tmp_path / "out")
    with pytest.raises(RecFlowFormatError, match=r"all_stage/2030-01-01\.feather.*missing"):
        convert_recflow(raw_copy, tmp_path / "out", days=["2030-01-01"], test_days=1)
    assert not (tmp_path / "out").exists()


def _edit_pickle(path: Path, edit) -> None:
    obj = pickle.loads(path.read_bytes())
    edit(obj)
    path.write_bytes(pickle.dumps(obj))


def test_request_missing_from_a_pickle_is_named(raw_copy, truth, tmp_path):
    day = truth[-1]
    rid = int(day.request_id[5])
    _edit_pickle(raw_copy / "request_id_dict" / f"{day.name}.pkl", lambda d: d.pop(rid))
    with pytest.raises(RecFlowFormatError, match=rf"request_id_dict/{day.name}\.pkl: request_id {rid} .*missing"):
        convert_recflow(raw_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # earlier days were converted, but nothing reached `out`
    assert not list(tmp_path.glob(".out.*"))  # and the staging folder is gone


def test_request_missing_from_the_history_pickle_is_named(raw_copy, truth, tmp_path):
    day = truth[0]
    rid = int(day.request_id[0])
    _edit_pickle(raw_copy / "seq_effective_50_dict" / f"{day.name}.pkl", lambda d: d.pop(rid))
    with pytest.raises(RecFlowFormatError, match=rf"seq_effective_50_dict/{day.name}\.pkl: request_id {rid} "):
        convert_recflow(raw_copy, tmp_path / "out")


def test_wrong_flow_width_is_named(raw_copy, truth, tmp_path):
    day = truth[0]
    rid = int(day.request_id[3])

    def narrow(d):
        d[rid]["coarse_neg"] = d[rid]["coarse_neg"][:, :7]

    _edit_pickle(raw_copy / "request_id_dict" / f"{day.name}.pkl", narrow)
    with pytest.raises(
        RecFlowFormatError, match=rf"request {rid}: flow 'coarse_neg' has shape \(\d+, 7\), expected \(n, 8\)"
    ):
        convert_recflow(raw_copy, tmp_path / "out")


def test_wrong_history_width_is_named(raw_copy, truth, tmp_path):
    day = truth[0]
    rid = int(day.request_id[2])
    _edit_pickle(raw_copy / "seq_effective_50_dict" / f"{day.name}.pkl", lambda d: d.update({rid: d[rid][:, :9]}))
    with pytest.raises(
        RecFlowFormatError, match=rf"seq_effective_50_dict/.*request {rid}: history has shape \(50, 9\)"
    ):
        convert_recflow(raw_copy, tmp_path / "out")


def test_truncated_feather_file_is_named(raw_copy, tmp_path):
    path = raw_copy / "all_stage" / f"{list_days(raw_copy)[0]}.feather"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecFlowFormatError, match=rf"{path.name}: not a readable Feather file \(truncated"):
        convert_recflow(raw_copy, tmp_path / "out")


def test_missing_feather_column_is_named(raw_copy, tmp_path):
    path = raw_copy / "all_stage" / f"{list_days(raw_copy)[0]}.feather"
    table = feather.read_table(path)
    feather.write_feather(table.drop_columns(["rank_index"]), path)
    convert_recflow(raw_copy, tmp_path / "three", stages=3)  # three stages read rerank_index only
    with pytest.raises(RecFlowFormatError, match=r"column\(s\) \['rank_index'\] missing"):
        convert_recflow(raw_copy, tmp_path / "two", stages=2)


def test_out_of_vocabulary_id_is_named(raw_copy, truth, tmp_path):
    day = truth[0]
    rid = int(day.request_id[1])

    def corrupt(d):
        rows = d[rid]["rank_neg"].copy()
        rows[0, FLOW_COLUMNS.index("author_id")] = 10**9
        d[rid]["rank_neg"] = rows

    _edit_pickle(raw_copy / "request_id_dict" / f"{day.name}.pkl", corrupt)
    with pytest.raises(RecFlowFormatError, match=r"request_id_dict/.*field 'author_id' holds ids in .*1000000000"):
        convert_recflow(raw_copy, tmp_path / "out")


def test_missing_flow_is_an_empty_padded_group(raw_copy, truth, tmp_path):
    day = truth[0]
    rid = int(day.request_id[4])
    _edit_pickle(raw_copy / "request_id_dict" / f"{day.name}.pkl", lambda d: d[rid].pop("rank_neg"))
    schema = convert_recflow(raw_copy, tmp_path / "out")
    arrays = read_partition(tmp_path / "out", schema, schema.partitions[0])
    row = arrays["request_id"].tolist().index(rid)
    stage = arrays["stage"][row][arrays["mask"][row]]
    assert 2 not in stage.tolist()  # rank_neg (position 2) is absent; other groups are intact
    assert (stage == 3).sum() == min(int(day.flow_counts["rank_pos"][4]), 10)


def test_top_video_without_a_rank_row_gets_the_release_default(raw_copy, truth, tmp_path, caplog):
    day = truth[0]
    path = raw_copy / "all_stage" / f"{day.name}.feather"
    table = feather.read_table(path)
    rid, vid = int(day.request_id[0]), int(day.flow_items["rank_pos"][0, 0, 0])
    rid_col, vid_col = table.column("request_id").to_numpy(), table.column("video_id").to_numpy()
    flag = table.column("rank_pos").to_numpy().copy()
    flag[(rid_col == rid) & (vid_col == vid)] = 0
    table = table.set_column(table.schema.get_field_index("rank_pos"), "rank_pos", pa.array(flag))
    feather.write_feather(table, path)
    with caplog.at_level(logging.WARNING, logger="cascade_ranking.datasets.recflow"):
        schema = convert_recflow(raw_copy, tmp_path / "out")
    assert "1 rank_pos video(s) have no" in caplog.text
    arrays = read_partition(tmp_path / "out", schema, schema.partitions[0])
    row = arrays["request_id"].tolist().index(rid)
    labels = arrays["label"][row][arrays["item.video_id"][row] == vid + 1]
    assert -470.0 in labels.tolist()
    assert schema.provenance["days"][day.name]["rank_index_misses"] == 1


def test_out_refuses_an_unrelated_folder_and_the_source(raw, tmp_path):
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a previous output"):
        convert_recflow(raw, other)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="source folder"):
        convert_recflow(raw, raw)


def test_reconverting_replaces_a_previous_dataset(raw, tmp_path):
    out = tmp_path / "out"
    convert_recflow(raw, out, days=list_days(raw)[:2], test_days=1)
    schema = convert_recflow(raw, out, days="2024-01-13..2024-01-15", test_days=2)
    assert [p.role for p in schema.partitions] == ["train", "test", "test"]
    assert DatasetSchema.load(out) == schema
    assert sorted(p.name for p in out.iterdir()) == ["2024-01-13.parquet", "2024-01-14.parquet",
                                                     "2024-01-15.parquet", "schema.json"]  # fmt: skip


def test_bad_arguments_are_named(raw, tmp_path):
    with pytest.raises(ValueError, match="stages=4"):
        convert_recflow(raw, tmp_path / "o", stages=4)
    with pytest.raises(ValueError, match="test_days=2 \\+ valid_days=2 exceed the 3 day"):
        convert_recflow(raw, tmp_path / "o", test_days=2, valid_days=2)


def test_utc_time_fields_agree_with_datetime():
    rng = np.random.default_rng(0)
    seconds = np.concatenate([rng.integers(-(10**9), 4 * 10**9, 2000), [0, -1, 86_399, 86_400, 1_704_067_200]])
    weekday, hour, minute = utc_time_fields(seconds.reshape(-1, 5))
    want = np.array([_utc(int(s)) for s in seconds]).reshape(-1, 5, 3)
    np.testing.assert_array_equal(weekday, want[..., 0])
    np.testing.assert_array_equal(hour, want[..., 1])
    np.testing.assert_array_equal(minute, want[..., 2])
    assert _utc(1_704_067_200) == (1, 1, 1)  # 2024-01-01 00:00 UTC was a Monday


def test_parse_days():
    assert parse_days("2024-01-30..2024-02-02") == ["2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02"]
    assert parse_days("2024-01-13, 2024-01-15..2024-01-16") == ["2024-01-13", "2024-01-15", "2024-01-16"]
    assert parse_days(["a", "b"]) == ["a", "b"]
    assert len(parse_days("2024-01-13..2024-02-04")) == 23  # the LCRON protocol: 22 train days + 1 test day
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_days("2024-02-04..2024-01-13")
    with pytest.raises(ValueError, match="more than once"):
        parse_days("2024-01-13,2024-01-13")
    with pytest.raises(ValueError, match="no day"):
        parse_days(" , ")


def test_in_place_assembly_equals_the_copying_one_and_copying_leaves_the_day_intact(truth):
    from cascade_ranking.datasets.recflow import funnel_spec, recflow_schema, to_store_arrays

    day = truth[0].to_recflow_day(3)
    schema = recflow_schema(stages=3, id_cnt=CONFIG.canonical_id_cnt(), history_length=50, partitions=[])
    before = {k: v.copy() for k, v in day.items.items()}
    copied = to_store_arrays(day, funnel_spec(3), schema)
    for k, v in day.items.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    in_place = to_store_arrays(day, funnel_spec(3), schema, inplace=True)
    assert copied.keys() == in_place.keys()
    for k in copied:
        np.testing.assert_array_equal(copied[k], in_place[k], err_msg=k)
    assert in_place["item.video_id"] is day.items["video_id"]  # reused, not copied

"""``prepare table`` on bad input: each case gives its one-line message (file, column, example row) or, with
``on_error="drop"``, drops and counts; nothing half-written stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets.table import TableFormatError, convert_table
from cascade_ranking.datasets.table_mapping import TableMapping

DAY = 86_400
START = 1_704_067_200  # 2024-01-01 00:00 UTC
STAGES = ["neg", "mid", "pos"]


def _rows(days: int = 3, requests: int = 4, cands: int = 5) -> dict[str, np.ndarray]:
    """A clean long table: request r (on day r // requests) has items r*10 + 0..cands-1."""
    r = np.repeat(np.arange(days * requests), cands)
    k = np.tile(np.arange(cands), days * requests)
    return {
        "request_id": r.astype(np.int64),
        "ts": (START + (r // requests) * DAY + 3600 + r).astype(np.int64),
        "user_id": (r % 3).astype(np.int64),
        "item_id": (r * 10 + k).astype(np.int64),
        "stage": np.asarray(STAGES, dtype=object)[np.minimum(k, 2)],
        "label": (k % 3).astype(np.float64),
    }


def _write(root: Path, cols: dict, types: dict | None = None) -> Path:
    """One Parquet file per day in hive folders ``root/dt=<day>/part.parquet``."""
    day = (np.asarray(cols["ts"]) - START) // DAY
    for d in np.unique(day):
        sel = np.flatnonzero(day == d)
        table = pa.table({k: pa.array([v[i] for i in sel], (types or {}).get(k)) for k, v in cols.items()})
        path = root / f"dt=2024-01-0{d + 1}" / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return root


def _mapping(**overrides) -> TableMapping:
    values = {
        "name": "tiny",
        "request": {"id": "request_id", "time": "ts"},
        "user": [{"name": "user_id", "column": "user_id"}],
        "item": [{"name": "item_id", "column": "item_id"}],
        "funnel": {"column": "stage", "stages": STAGES},
        "label": {"column": "label"},
        "candidates": {"num": 4},
        "partitions": {"unit": "day", "test": 1},
        "vocabulary": {"fit_on": "all"},
        "cascade": {"keep": [3], "gt_num": 1},
    }
    values.update(overrides)
    return TableMapping.model_validate(values)


def _file(root: Path, day: int) -> str:
    return str(root / f"dt=2024-01-0{day}" / "part.parquet")


def _fails(tmp_path: Path, src: Path, mapping: TableMapping, message: str) -> None:
    """The conversion raises exactly ``message``, and leaves no output and no temporary folder."""
    with pytest.raises(TableFormatError) as info:
        convert_table(src, tmp_path / "out", mapping)
    assert str(info.value) == message
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_clean_table_converts(tmp_path):
    src = _write(tmp_path / "long", _rows())
    report = convert_table(src, tmp_path / "out", _mapping())
    schema = open_dataset(tmp_path / "out")
    assert [p.name for p in schema.partitions] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert [p.role for p in schema.partitions] == ["train", "train", "test"]
    assert report.rows == 60 and report.requests == 12
    a = read_partition(tmp_path / "out", schema, schema.partitions[0])
    # 5 rows per request, N = 4: the deepest stages are kept (pos, pos, pos, mid... here stages 0,1,2,2,2)
    assert a["mask"].all()
    assert sorted(a["stage"][0].tolist()) == [1, 2, 2, 2]


def _drop_stage(c):
    del c["stage"]


def _label_as_text(c):
    c["label"] = c["label"].astype(str)


def _unknown_stage(c):
    c["stage"][7] = "shown"  # request 1, item 12


def _spread(c):
    c["ts"][21] += DAY  # request 4 (day 2): one row moved to day 3


def _duplicate(c):
    c["item_id"][11] = c["item_id"][10]  # request 2 logs item 20 twice


def _nan_label(c):
    c["label"][26] = np.nan  # request 5, item 51


def _inf_label(c):
    c["label"][26] = np.inf


_DROP = "; --on-error drop drops them)"
BAD_TABLES = {
    "missing column": (_drop_stage, 1, "column 'stage' missing (funnel.column; columns: ['dt', 'item_id', 'label', "
                       "'request_id', 'ts', 'user_id'])"),
    "wrong type": (_label_as_text, 1, "column 'label' has type VARCHAR, expected integer or float or boolean "
                   "(label.column)"),
    "stage not named": (_unknown_stage, 1, "column 'stage': value 'shown' is not among funnel.stages ['neg', 'mid', "
                        "'pos'] (e.g. row request_id=1, item_id=12; 1 such row(s)" + _DROP),
    "request in two partitions": (_spread, 3, "column 'ts': request 4 has rows in partitions 2024-01-02 and "
                                  "2024-01-03, a request must lie in one (e.g. row request_id=4; 1 such request(s)"
                                  + _DROP),
    "duplicate (request, item)": (_duplicate, 1, "columns 'request_id', 'item_id': duplicate (request, item) rows "
                                  "(e.g. row request_id=2, item_id=20 appears 2 times; 1 such pair(s); --on-error "
                                  "drop keeps the row at the deepest stage)"),
    "NaN label": (_nan_label, 2, "column 'label': label value nan is null or not finite (e.g. row request_id=5, "
                  "item_id=51; 1 such row(s)" + _DROP),
    "inf label": (_inf_label, 2, "column 'label': label value inf is null or not finite (e.g. row request_id=5, "
                  "item_id=51; 1 such row(s)" + _DROP),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_table_gives_its_message(tmp_path, case):
    """Each bad input: one line naming the file (the day folder of the example row), the column, an example row."""
    mutate, day, message = BAD_TABLES[case]
    cols = _rows()
    mutate(cols)
    src = _write(tmp_path / "long", cols)
    _fails(tmp_path, src, _mapping(), f"{_file(src, day)}: {message}")


@pytest.mark.parametrize(
    ("column", "row", "message"),
    [
        ("request_id", 3, "column 'request_id': null request id (e.g. row request_id=NULL, item_id=3"),
        ("item_id", 3, "column 'item_id': null item id (e.g. row request_id=0, item_id=NULL"),
    ],
)
def test_null_ids(tmp_path, column, row, message):
    cols = {k: list(v) for k, v in _rows().items()}
    cols[column][row] = None
    types = {"request_id": pa.int64(), "item_id": pa.int64()}
    src = _write(tmp_path / "long", cols, types)
    _fails(tmp_path, src, _mapping(), f"{_file(src, 1)}: {message}; 1 such row(s); --on-error drop drops them)")


def test_weighted_feedback_names_the_bad_column(tmp_path):
    cols = _rows()
    cols["click"] = (cols["label"] > 0).astype(np.float64)
    cols["like"] = (cols["label"] > 1).astype(np.float64)
    cols["like"][26] = np.nan
    src = _write(tmp_path / "long", cols)
    mapping = _mapping(label={"sum": {"click": 1.0, "like": 2.0}})
    _fails(
        tmp_path, src, mapping,
        f"{_file(src, 2)}: column 'like': label value nan is null or not finite (e.g. row request_id=5, item_id=51; "
        "1 such row(s); --on-error drop drops them)",
    )  # fmt: skip


def _events(tmp_path: Path, items: list[int]) -> Path:
    path = tmp_path / "events.parquet"
    n = len(items)
    pq.write_table(pa.table({"uid": [0] * n, "t": [START - 100 + i for i in range(n)], "item": items}), path)
    return path


def test_history_events_name_unknown_items(tmp_path):
    src = _write(tmp_path / "long", _rows())
    events = _events(tmp_path, [10, 999, 11])
    mapping = _mapping(
        history={
            "length": 3,
            "events": {"path": str(events), "user": "uid", "time": "t", "fields": {"item_id": "item"}},
        }
    )
    _fails(
        tmp_path, src, mapping,
        f"{events}: column 'item': item 999 is not among the long table's candidate items (e.g. row uid=0, "
        "item=999; 1 such row(s); --on-error drop drops them)",
    )  # fmt: skip


def test_history_events_most_recent_first(tmp_path):
    """The last L events strictly before the request, most recent first (slot 0), against a numpy reference."""
    src = _write(tmp_path / "long", _rows())
    events = _events(tmp_path, [10, 11, 12, 20, 21])  # user 0, all before the first request
    mapping = _mapping(
        history={
            "length": 3,
            "events": {"path": str(events), "user": "uid", "time": "t", "fields": {"item_id": "item"}},
        }
    )
    convert_table(src, tmp_path / "out", mapping)
    schema = open_dataset(tmp_path / "out")
    a = read_partition(tmp_path / "out", schema, schema.partitions[0])
    ids = {v: i for v, i in zip(*_vocab(tmp_path / "out"))}
    want = np.array([ids[21], ids[20], ids[12]])
    user0 = a["user.user_id"] == ids_user(tmp_path / "out", 0)
    np.testing.assert_array_equal(a["history.item_id"][user0], np.broadcast_to(want, (user0.sum(), 3)))
    assert (a["history.item_id"][~user0] == 0).all()


def _vocab(out: Path, name: str = "item.item_id"):
    t = pq.read_table(out / "vocabulary" / f"{name}.parquet")
    return t.column("value").to_pylist(), t.column("id").to_pylist()


def ids_user(out: Path, value) -> int:
    values, ids = _vocab(out, "user.user_id")
    return ids[values.index(value)]


def test_drop_counts_what_it_dropped(tmp_path):
    cols = _rows()
    cols["stage"][7] = "shown"  # 1 row
    cols["label"][26] = np.nan  # 1 row
    cols["ts"][41] += DAY  # request 8 spread: its 5 rows
    cols["item_id"][11] = cols["item_id"][10]  # 1 duplicate row
    src = _write(tmp_path / "long", cols)
    report = convert_table(src, tmp_path / "out", _mapping(), on_error="drop")
    assert report.dropped == {
        "unknown stage": 1,
        "null or non-finite 'label'": 1,
        "request in two partitions": 5,
        "duplicate (request, item)": 1,
    }
    assert report.requests == 11
    assert open_dataset(tmp_path / "out").provenance["dropped"] == report.dropped


def test_failure_keeps_the_previous_dataset(tmp_path):
    src = _write(tmp_path / "long", _rows())
    convert_table(src, tmp_path / "out", _mapping())
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    bad = _rows()
    bad["stage"][0] = "?"
    with pytest.raises(TableFormatError):
        convert_table(_write(tmp_path / "bad", bad), tmp_path / "out", _mapping())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_time_zone_and_hour_partitions(tmp_path):
    """Partitions are cut in the mapping's time zone: 17:xx UTC on Jan 1 is Jan 2 01:xx in Shanghai (UTC+8)."""
    cols = _rows(days=2, requests=2)
    cols["ts"] = cols["ts"] + 16 * 3600  # 17:00 UTC + r seconds
    src = _write(tmp_path / "long", cols)
    local = _mapping(partitions={"unit": "day", "time_zone": "Asia/Shanghai", "test": 1})
    convert_table(src, tmp_path / "day", local)
    assert [p.name for p in open_dataset(tmp_path / "day").partitions] == ["2024-01-02", "2024-01-03"]
    hourly = _mapping(partitions={"unit": "hour", "test_from": "2024-01-02T17:00"})
    convert_table(src, tmp_path / "hour", hourly)
    parts = open_dataset(tmp_path / "hour").partitions
    assert [(p.name, p.role) for p in parts] == [("2024-01-01T17", "train"), ("2024-01-02T17", "test")]
    week = _mapping(partitions={"unit": "week", "test": 0})
    convert_table(src, tmp_path / "week", week)
    assert [p.name for p in open_dataset(tmp_path / "week").partitions] == ["week-2024-01-01"]


def test_numeric_buckets_and_vocabulary_against_numpy(tmp_path):
    """Equal-frequency cut points = numpy's linear quantiles of the train rows; vocabulary ids by ascending value
    from 2, values below min_count (or unseen in train) -> OOV id 1."""
    cols = _rows(days=3, requests=10)
    rng = np.random.default_rng(0)
    cols["price"] = np.round(rng.lognormal(2, 1, len(cols["ts"])), 2)
    cols["cat"] = rng.integers(0, 8, len(cols["ts"]))
    cols["item_id"] = cols["item_id"] % 10  # 5 item ids, each seen often enough for the vocabulary
    src = _write(tmp_path / "long", cols)
    mapping = _mapping(
        item=[
            {"name": "item_id", "column": "item_id"},
            {"name": "price", "column": "price", "type": "numeric", "bins": 4},
            {"name": "cat", "column": "cat"},
        ],
        candidates={"num": 5},
        vocabulary={"min_count": 4, "oov_id": 1, "fit_on": "train"},
    )
    convert_table(src, tmp_path / "out", mapping)
    schema = open_dataset(tmp_path / "out")
    train = (cols["ts"] - START) // DAY < 2  # days 1-2 train, day 3 test
    edges = np.unique(np.quantile(cols["price"][train], [0.25, 0.5, 0.75]))
    assert schema.provenance["numeric_cut_points"]["price"] == pytest.approx(edges.tolist())
    values, counts = np.unique(cols["cat"][train], return_counts=True)
    kept = values[counts >= 4]
    for part in schema.partitions:
        a = read_partition(tmp_path / "out", schema, part)
        req, _ = np.nonzero(a["mask"])
        key = {(r, i): n for n, (r, i) in enumerate(zip(cols["request_id"], cols["item_id"]))}
        items = _decode(tmp_path / "out", a["item.item_id"][a["mask"]])
        rows = np.array([key[(r, i)] for r, i in zip(a["request_id"][req], items)])
        np.testing.assert_array_equal(
            a["item.price"][a["mask"]], 1 + np.searchsorted(edges, cols["price"][rows], side="right")
        )
        pos = np.searchsorted(kept, cols["cat"][rows])
        known = (pos < len(kept)) & (kept[np.minimum(pos, len(kept) - 1)] == cols["cat"][rows])
        np.testing.assert_array_equal(a["item.cat"][a["mask"]], np.where(known, pos + 2, 1))


def _decode(out: Path, ids: np.ndarray) -> np.ndarray:
    values, vocab_ids = _vocab(out)
    dec = np.zeros(max(vocab_ids) + 1, dtype=np.int64)
    dec[vocab_ids] = values
    return dec[ids]


def test_string_request_ids_are_numbered_in_time_order(tmp_path):
    cols = _rows()
    cols["request_id"] = np.array([f"req-{r:03d}" for r in cols["request_id"]], dtype=object)
    src = _write(tmp_path / "long", cols)
    convert_table(src, tmp_path / "out", _mapping())
    schema = open_dataset(tmp_path / "out")
    ids = np.concatenate([read_partition(tmp_path / "out", schema, p)["request_id"] for p in schema.partitions])
    np.testing.assert_array_equal(ids, np.arange(12))


def test_invalid_mapping_names_the_field(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: x\nrequest: {id: r, time: t}\n")
    from cascade_ranking.datasets.table_mapping import load_mapping

    with pytest.raises(ValueError, match=r"m.yaml: invalid mapping: user: Field required; item: Field required"):
        load_mapping(path)
    with pytest.raises(ValueError, match="time_zone='Mars/Olympus': not an IANA time zone"):
        _mapping(partitions={"time_zone": "Mars/Olympus", "test": 1})


def test_cli_prepare_table(tmp_path):
    """`prepare table --example` prints a mapping that converts the shipped CSV; --on-error drop prints counts."""
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    runner = CliRunner()
    example = runner.invoke(app, ["prepare", "table", "--example"])
    assert example.exit_code == 0
    (tmp_path / "m.yaml").write_text(example.output)
    csv = Path(__file__).resolve().parents[1] / "examples" / "table" / "logs.csv"
    done = runner.invoke(
        app, ["prepare", "table", str(csv), str(tmp_path / "out"), "--mapping", str(tmp_path / "m.yaml")]
    )
    assert done.exit_code == 0, done.output
    assert "6,132 rows -> 280 requests" in done.output
    cols = _rows()
    cols["stage"][7] = "shown"
    src = _write(tmp_path / "long", cols)
    (tmp_path / "tiny.yaml").write_text(__import__("yaml").safe_dump(_mapping().model_dump(mode="json")))
    args = ["prepare", "table", str(src), str(tmp_path / "tiny"), "--mapping", str(tmp_path / "tiny.yaml")]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 2 and "value 'shown' is not among funnel.stages" in failed.output
    dropped = runner.invoke(app, [*args, "--on-error", "drop"])
    assert dropped.exit_code == 0 and "dropped 1 row(s): unknown stage" in dropped.output


def _funnel_table(requests: int = 300) -> dict[str, np.ndarray]:
    """Each request: 2 'pos', 3 'mid', 10 'neg' rows (items k = 0..14 of the request)."""
    r = np.repeat(np.arange(requests), 15)
    k = np.tile(np.arange(15), requests)
    return {
        "request_id": r.astype(np.int64),
        "ts": (START + (r % 2) * DAY + r).astype(np.int64),
        "user_id": (r % 3).astype(np.int64),
        "item_id": (r * 100 + k).astype(np.int64),
        "stage": np.asarray(STAGES, dtype=object)[np.where(k < 2, 2, np.where(k < 5, 1, 0))],
        "label": np.where(k < 2, 2.0, np.where(k < 5, 1.0, 0.0)),
    }


def test_truncation_keeps_deepest_stages_and_samples_the_cut_stage_uniformly(tmp_path):
    """N = 8: both 'pos', all 3 'mid', 3 of the 10 'neg' rows; each 'neg' row is kept with probability 3/10
    (a binomial bound over 300 requests); the same seed gives identical files, another seed another sample."""
    src = _write(tmp_path / "long", _funnel_table())
    kept = np.zeros(10)
    for seed in (0, 0, 1):
        out = tmp_path / f"out-{seed}"
        convert_table(src, out, _mapping(candidates={"num": 8, "seed": seed}, cascade={"keep": [6], "gt_num": 2}))
    schema = open_dataset(tmp_path / "out-0")
    for part in schema.partitions:
        a = read_partition(tmp_path / "out-0", schema, part)
        assert a["mask"].all()
        np.testing.assert_array_equal(
            np.sort(a["stage"], axis=1), np.broadcast_to([0, 0, 0, 1, 1, 1, 2, 2], (len(a["stage"]), 8))
        )
        items = _decode(tmp_path / "out-0", a["item.item_id"]) % 100
        kept += np.bincount(items[a["stage"] == 0] - 5, minlength=10)
        b = read_partition(tmp_path / "out-1", schema, part)
        assert not np.array_equal(np.sort(a["item.item_id"], 1), np.sort(b["item.item_id"], 1))
    share = kept / 300
    assert np.all(np.abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 300)), share


def test_per_stage_counts_pad_and_sample(tmp_path):
    """per_stage {pos: 3, mid: 2, neg: 4}: 2 pos (one padded slot), 2 of 3 mid, 4 of 10 neg; N = 9."""
    src = _write(tmp_path / "long", _funnel_table(20))
    mapping = _mapping(candidates={"per_stage": {"pos": 3, "mid": 2, "neg": 4}}, cascade={"keep": [6], "gt_num": 2})
    convert_table(src, tmp_path / "out", mapping)
    schema = open_dataset(tmp_path / "out")
    assert schema.num_candidates == 9
    for part in schema.partitions:
        a = read_partition(tmp_path / "out", schema, part)
        for s, want in ((2, 2), (1, 2), (0, 4)):
            assert ((a["stage"] == s) & a["mask"]).sum(axis=1).tolist() == [want] * len(a["mask"])
        assert (a["mask"].sum(axis=1) == 8).all()


def test_history_events_against_a_reference(tmp_path):
    """Random events of 3 users around the requests: each request's history = its user's last 4 events strictly
    before the request time, most recent first (ties by item id), zero-padded."""
    cols = _rows(days=2, requests=6)
    src = _write(tmp_path / "long", cols)
    rng = np.random.default_rng(1)
    items = np.unique(cols["item_id"])
    ev = {
        "uid": rng.integers(0, 3, 80),
        "t": rng.integers(START - DAY, START + 2 * DAY, 80),
        "item": rng.choice(items, 80),
    }
    pq.write_table(pa.table(ev), tmp_path / "events.parquet")
    events = {"path": str(tmp_path / "events.parquet"), "user": "uid", "time": "t", "fields": {"item_id": "item"}}
    convert_table(src, tmp_path / "out", _mapping(history={"length": 4, "events": events}))
    schema = open_dataset(tmp_path / "out")
    for part in schema.partitions:
        a = read_partition(tmp_path / "out", schema, part)
        for row, rid in enumerate(a["request_id"]):
            first = np.flatnonzero(cols["request_id"] == rid)[0]
            user, ts = cols["user_id"][first], cols["ts"][first]
            sel = (ev["uid"] == user) & (ev["t"] < ts)
            order = np.lexsort((ev["item"][sel], ev["t"][sel]))[::-1][:4]
            want = np.zeros(4, np.int64)
            want[: len(order)] = ev["item"][sel][order]
            np.testing.assert_array_equal(_decode(tmp_path / "out", a["history.item_id"][row]), want)


def test_history_events_of_another_id_type(tmp_path):
    src = _write(tmp_path / "long", _rows())
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"uid": ["u0"], "t": [START - 100], "item": [10]}), path)
    events = {"path": str(path), "user": "uid", "time": "t", "fields": {"item_id": "item"}}
    _fails(
        tmp_path, src, _mapping(history={"length": 3, "events": events}),
        f"{path}: column 'uid' has type VARCHAR, but the long table's 'user_id' has BIGINT (history.events must use "
        "the same ids)",
    )  # fmt: skip


def test_history_lists_of_different_lengths(tmp_path):
    cols = _rows()
    n = len(cols["ts"])
    cols["h_item"] = [[10, 11]] * n
    cols["h_cat"] = [[1, 2]] * 5 + [[1]] * 5 + [[1, 2]] * (n - 10)  # request 1: one element short
    src = _write(tmp_path / "long", cols)
    mapping = _mapping(
        item=[{"name": "item_id", "column": "item_id"}, {"name": "cat", "column": "user_id"}],
        history={"length": 2, "lists": {"item_id": "h_item", "cat": "h_cat"}},
    )
    with pytest.raises(TableFormatError) as info:
        convert_table(src, tmp_path / "out", mapping)
    assert str(info.value) == (
        f"{_file(src, 1)}: columns 'h_item', 'h_cat': history lists of different lengths (2 and 1; e.g. row "
        "request_id=1)"
    )

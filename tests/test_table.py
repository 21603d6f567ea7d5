"""``prepare table``: a long table (one row per request x candidate) -> the store.

The round trips are the issue's main check: MovieLens-100K's cascade dataset (built by
:mod:`cascade_ranking.datasets.movielens`) and a simulated RecFlow-layout dataset
(:mod:`cascade_ranking.datasets.synthetic`) are flattened into long tables (hive folders of Parquet files) and
converted back with the converter; the requests, candidates, labels, funnel positions, histories, user and
context values, partitions and roles must equal the dedicated builders' (ids compared in source values,
through the converted dataset's vocabulary files).
"""

from __future__ import annotations

import numpy as np
import pytest

from cascade_ranking.data.store import open_dataset
from cascade_ranking.datasets.table import convert_table
from cascade_ranking.datasets.table_mapping import TableMapping
from table_helpers import assert_same_requests, flatten_dataset


def _fields(role: str, names: list[str], derived: tuple[str, ...] = ()) -> list[dict]:
    return [{"name": n, "derive": n} if n in derived else {"name": n, "column": f"{role}_{n}"} for n in names]


def _mapping(schema, **overrides) -> TableMapping:
    """A mapping of a flattened ``schema`` (see ``table_helpers.flatten_dataset``)."""
    by_role = {r: [f.name for f in schema.features if f.role == r] for r in ("user", "context", "item")}
    values = {
        "name": schema.name,
        "request": {"id": "request_id", "time": "ts"},
        "user": _fields("user", by_role["user"]),
        "context": _fields("context", by_role["context"]),
        "item": _fields("item", by_role["item"]),
        "funnel": {"column": "stage", "stages": schema.funnel_positions},
        "label": {"column": "label"},
        "history": {"length": schema.history_length, "lists": {h.name: f"hist_{h.name}" for h in schema.history}},
        "candidates": {"num": schema.num_candidates},
        "vocabulary": {"fit_on": "all"},
        "cascade": {"keep": schema.keep, "gt_num": schema.gt_num},
    }
    values.update(overrides)
    return TableMapping.model_validate(values)


def test_movielens_round_trip(ml100k_dataset, tmp_path):
    """MovieLens-100K (2-stage, weekly partitions, recent-first histories) -> long table -> prepare table."""
    schema = open_dataset(ml100k_dataset)
    day = 86_400
    times = {p.name: int(np.datetime64(p.start, "s").astype(np.int64)) + day for p in schema.partitions}
    flatten_dataset(ml100k_dataset, tmp_path / "long", times)
    test_weeks = [p.start for p in schema.partitions if p.role == "test"]
    valid_weeks = [p.start for p in schema.partitions if p.role == "valid"]
    mapping = _mapping(
        schema,
        partitions={"unit": "week", "valid_from": valid_weeks[0], "test_from": test_weeks[0]},
    )
    report = convert_table(tmp_path / "long", tmp_path / "out", mapping)
    assert report.requests == sum(p.num_requests for p in schema.partitions)
    assert report.dropped == {}
    out = open_dataset(tmp_path / "out")
    assert (out.keep, out.gt_num, out.funnel_positions) == (schema.keep, schema.gt_num, schema.funnel_positions)
    assert_same_requests(ml100k_dataset, tmp_path / "out")


def test_recflow_layout_round_trip(tmp_path):
    """A simulated RecFlow-layout dataset (2-stage, daily partitions, 10 slots per funnel group, oldest-first
    histories, context derived from the request time) -> long table -> prepare table with per-stage counts."""
    from cascade_ranking.datasets.synthetic import simulate, small_config

    original = tmp_path / "recflow"
    schema = simulate(original, requests=300, days=3, stages=2, seed=4, config=small_config(), valid_days=1)
    assert schema is not None
    from cascade_ranking.data.store import read_partition

    times = {}
    for p in schema.partitions:  # request time from the stored UTC weekday/hour/minute and the day
        a = read_partition(original, schema, p)
        start = int(np.datetime64(p.name, "s").astype(np.int64))
        times[p.name] = start + (a["context.hour"] - 1) * 3600 + (a["context.minute"] - 1) * 60 + 7
    flatten_dataset(original, tmp_path / "long", times)
    stages = schema.funnel_positions
    mapping = _mapping(
        schema,
        context=_fields("context", ["weekday", "hour", "minute"], derived=("weekday", "hour", "minute")),
        candidates={"per_stage": {s: 10 for s in stages}, "seed": 3},
        history={
            "length": schema.history_length,
            "lists": {h.name: f"hist_{h.name}" for h in schema.history},
            "order": "oldest_first",
        },
        partitions={"unit": "day", "valid": 1, "test": 1},
    )
    convert_table(tmp_path / "long", tmp_path / "out", mapping)
    assert_same_requests(original, tmp_path / "out")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_json_lines_read_like_parquet(tmp_path, fmt):
    """The shipped example CSV, and the same rows as JSON lines, give the same dataset."""
    import pyarrow.csv as pacsv
    import yaml

    from cascade_ranking.datasets.table_mapping import EXAMPLE_MAPPING

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    src = root / "examples" / "table" / "logs.csv"
    mapping = TableMapping.model_validate(yaml.safe_load(EXAMPLE_MAPPING))
    if fmt == "jsonl":
        table = pacsv.read_csv(src)
        lists = [
            [int(x) for x in s.strip("[]").split(",") if x.strip()] for s in table.column("history_items").to_pylist()
        ]
        table = table.set_column(table.column_names.index("history_items"), "history_items", [lists])
        src = tmp_path / "logs.jsonl"
        src.write_text("\n".join(__import__("json").dumps(r) for r in table.to_pylist()) + "\n")
    convert_table(src, tmp_path / fmt, mapping)
    if fmt == "jsonl":
        convert_table(root / "examples" / "table" / "logs.csv", tmp_path / "csv", mapping)
        from table_helpers import requests_by_id

        a, b = requests_by_id(tmp_path / "csv"), requests_by_id(tmp_path / "jsonl")
        assert a.keys() == b.keys()
        for name in a:
            for key in a[name]:
                if key != "role":
                    np.testing.assert_array_equal(a[name][key], b[name][key])


def test_converted_example_trains(tmp_path):
    """The shipped CSV, converted with the example mapping, trains end to end (what `train --data OUT` runs)."""
    from pathlib import Path

    import yaml

    from cascade_ranking.datasets.table_mapping import EXAMPLE_MAPPING
    from cascade_ranking.training.config import TrainConfig
    from cascade_ranking.training.loop import train

    csv = Path(__file__).resolve().parents[1] / "examples" / "table" / "logs.csv"
    convert_table(csv, tmp_path / "data", TableMapping.model_validate(yaml.safe_load(EXAMPLE_MAPPING)))
    config = TrainConfig(data=tmp_path / "data", device="cpu", method="lcron", passes=1, threads=1)
    result = train(config, data=tmp_path / "data", run_dir=tmp_path / "run")
    test = result.metrics["test"]
    assert test["requests"] == 40 and 0.0 <= test["joint_recall"] <= 1.0

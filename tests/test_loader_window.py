"""The loader's bounded shuffle window: a partition of many row groups is streamed, never read whole.

Checked against the partition read whole (``read_partition``): every request exactly once per pass (per rank
under sharding), its candidates a permutation of its stored slots with features and labels kept together,
``ceil(R / batch_size)`` batches with only the last partial, at most ``window`` requests read at once,
deterministic per seed, and request ids unique over the whole partition, not only within a window.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from cascade_ranking.data import loader, store
from cascade_ranking.data.loader import iterate_partition
from cascade_ranking.data.store import StoreError, open_dataset, read_partition, row_group_sizes
from conftest import make_tiny_dataset

GROUP = 7  # requests per row group in these tests
REQUESTS = 61  # 9 row groups, the last one partial


@pytest.fixture
def grouped(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ROW_GROUP_REQUESTS", GROUP)
    make_tiny_dataset(tmp_path / "d", requests_per_partition=REQUESTS)
    schema = open_dataset(tmp_path / "d")
    return tmp_path / "d", schema, schema.partitions[0]


def by_request(arrays: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    return {int(r): {k: v[i] for k, v in arrays.items()} for i, r in enumerate(arrays["request_id"])}


def test_files_are_written_in_row_groups(grouped):
    d, _, part = grouped
    assert row_group_sizes(d, part) == [GROUP] * (REQUESTS // GROUP) + [REQUESTS % GROUP]
    assert pq.ParquetFile(d / part.file_name).metadata.num_row_groups == math.ceil(REQUESTS / GROUP)


@pytest.mark.parametrize("window,batch_size", [(20, 8), (7, 5), (14, 64), (1, 3)])
def test_every_request_once_with_its_own_candidates(grouped, window, batch_size):
    d, schema, part = grouped
    stored = by_request(read_partition(d, schema, part))
    batches = list(iterate_partition(d, schema, part, batch_size=batch_size, shuffle=True,
                                     rng=np.random.default_rng(0), window=window))  # fmt: skip
    sizes = [b.batch_size for b in batches]
    assert len(batches) == math.ceil(REQUESTS / batch_size)
    assert all(s == batch_size for s in sizes[:-1]) and sum(sizes) == REQUESTS
    seen = [int(r) for b in batches for r in b.request_id]
    assert sorted(seen) == sorted(stored)
    for b in batches:
        for i, r in enumerate(b.request_id.tolist()):
            want = stored[r]
            # the slots are permuted, together: sort both by (item_id, label) and compare every column
            got_key = np.lexsort((b.label[i].numpy(), b.item["item_id"][i].numpy(), ~b.mask[i].numpy()))
            want_key = np.lexsort((want["label"], want["item.item_id"], ~want["mask"]))
            for f in schema.fields_with_role("item"):
                np.testing.assert_array_equal(b.item[f.name][i].numpy()[got_key], want[f"item.{f.name}"][want_key])
            np.testing.assert_array_equal(b.label[i].numpy()[got_key], want["label"][want_key])
            np.testing.assert_array_equal(b.stage[i].numpy()[got_key], want["stage"][want_key])
            np.testing.assert_array_equal(b.history["item_id"][i].numpy(), want["history.item_id"])
            assert int(b.user["user_id"][i]) == int(want["user.user_id"])


def test_at_most_a_window_is_read_at_once(grouped, monkeypatch):
    d, schema, part = grouped
    reads = []
    real = loader.read_partition

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        reads.append(len(out["request_id"]))
        return out

    monkeypatch.setattr(loader, "read_partition", spy)
    list(iterate_partition(d, schema, part, batch_size=4, shuffle=True, rng=np.random.default_rng(1), window=20))
    assert sum(reads) == REQUESTS and max(reads) <= 20 and len(reads) >= 4
    reads.clear()
    list(iterate_partition(d, schema, part, batch_size=4, shuffle=True, rng=np.random.default_rng(1), window=None))
    assert reads == [REQUESTS]  # window=None: the partition whole, as before windows existed


def test_shuffle_visits_row_groups_in_random_order_and_is_seeded(grouped):
    d, schema, part = grouped

    def order(seed, shuffle=True):
        rng = np.random.default_rng(seed)
        return [int(r) for b in iterate_partition(d, schema, part, batch_size=8, shuffle=shuffle, rng=rng, window=14)
                for r in b.request_id]  # fmt: skip

    stored_order = read_partition(d, schema, part)["request_id"].tolist()
    assert order(5) == order(5)
    assert order(5) != order(6)
    assert order(0, shuffle=False) == stored_order
    groups = [frozenset(stored_order[i : i + GROUP]) for i in range(0, REQUESTS, GROUP)]
    first = []
    for seed in range(6):
        window = set(order(seed)[:14])  # the first window: two whole row groups ...
        assert sum(g <= window for g in groups) == 2
        first.append(frozenset(i for i, g in enumerate(groups) if g <= window))
    assert len(set(first)) > 1  # ... chosen at random


def test_shards_partition_the_requests(grouped):
    d, schema, part = grouped

    def ids(shard):
        rng = np.random.default_rng(2)
        batches = iterate_partition(d, schema, part, batch_size=5, shuffle=True, rng=rng, shard=shard, window=14)
        return [int(r) for b in batches for r in b.request_id]

    ranks = [ids((k, 3)) for k in range(3)]
    everything = ids((0, 1))
    for k in range(3):
        assert ranks[k] == everything[k::3]


def test_duplicate_request_ids_across_windows_are_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ROW_GROUP_REQUESTS", GROUP)
    make_tiny_dataset(tmp_path / "d", requests_per_partition=REQUESTS)
    schema = open_dataset(tmp_path / "d")
    part = schema.partitions[0]
    table = pq.read_table(tmp_path / "d" / part.file_name)
    ids = table.column("request_id").to_numpy().copy()
    ids[-1] = ids[0]  # first and last row group: never in the same window of 14
    table = table.set_column(table.column_names.index("request_id"), "request_id", [ids])
    pq.write_table(table, tmp_path / "d" / part.file_name, row_group_size=GROUP)
    with pytest.raises(StoreError, match=r"request_id.*duplicate"):
        list(iterate_partition(tmp_path / "d", schema, part, batch_size=8, shuffle=True, window=14))


def test_bad_window(grouped):
    d, schema, part = grouped
    with pytest.raises(ValueError, match="window"):
        list(iterate_partition(d, schema, part, batch_size=8, shuffle=True, window=0))

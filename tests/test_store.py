"""The Parquet request-list store and the streaming loader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cascade_ranking.data.loader import iterate_partition, iterate_partitions
from cascade_ranking.data.schema import DatasetSchema, SchemaError
from cascade_ranking.data.store import StoreError, open_dataset, read_partition, write_partition
from cascade_ranking.types import check_keep


def test_round_trip_reads_what_was_written(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    arrays = read_partition(tiny_dataset, schema, schema.partitions[0])
    assert arrays["item.item_id"].shape == (50, 12)
    assert arrays["history.item_id"].shape == (50, 5)
    assert arrays["mask"].dtype == np.bool_ and arrays["label"].dtype == np.float32
    table = pq.read_table(tiny_dataset / schema.partitions[0].file_name)
    assert table.column("request_id").to_pylist() == arrays["request_id"].tolist()
    assert pa.types.is_fixed_size_list(table.schema.field("item.item_id").type)


def test_loader_yields_every_request_once_and_keeps_the_last_partial_batch(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    part = schema.partitions[0]
    batches = list(iterate_partition(tiny_dataset, schema, part, batch_size=16, shuffle=True))
    assert [b.batch_size for b in batches] == [16, 16, 16, 2]
    ids = torch.cat([b.request_id for b in batches]).tolist()
    assert sorted(ids) == list(range(50))
    assert ids != list(range(50))  # shuffled within the partition


def test_loader_shuffles_candidate_slots_consistently_across_columns(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    part = schema.partitions[0]
    raw = read_partition(tiny_dataset, schema, part)
    (batch,) = iterate_partition(tiny_dataset, schema, part, batch_size=100, shuffle=False)
    assert not torch.equal(batch.stage, torch.from_numpy(raw["stage"]).long())  # position is not the layout
    for r in range(50):  # same multiset of (item, stage, label, mask) tuples per request
        got = sorted(
            zip(
                batch.item["item_id"][r].tolist(),
                batch.stage[r].tolist(),
                batch.label[r].tolist(),
                batch.mask[r].tolist(),
            )
        )
        want = sorted(
            zip(
                raw["item.item_id"][r].tolist(),
                raw["stage"][r].tolist(),
                raw["label"][r].tolist(),
                raw["mask"][r].tolist(),
            )
        )
        assert got == want
    # history is not permuted
    assert torch.equal(batch.history["item_id"], torch.from_numpy(raw["history.item_id"]))


def test_loader_position_does_not_leak_the_label(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    batches = list(iterate_partitions(tiny_dataset, schema, schema.partitions, batch_size=64, shuffle=False))
    top = torch.cat([(b.stage == b.stage.max()).float() for b in batches])
    # the top group occupies the first slots on disk; after loading, every slot holds it about equally often
    per_slot = top.mean(0)
    assert per_slot.max() - per_slot.min() < 0.3


def test_sharding_partitions_requests_without_loss_or_duplicates(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    part = schema.partitions[1]
    seen = []
    for rank in range(3):
        rng = np.random.default_rng(7)
        for b in iterate_partition(tiny_dataset, schema, part, batch_size=8, shuffle=True, rng=rng, shard=(rank, 3)):
            seen += b.request_id.tolist()
    assert sorted(seen) == sorted(range(50, 100))


def test_batch_to_and_select(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    (batch,) = iterate_partition(tiny_dataset, schema, schema.partitions[0], batch_size=100, shuffle=False)
    sub = batch.to("cpu").select(torch.tensor([0, 2]))
    assert sub.batch_size == 2 and sub.item["genre"].shape == (2, 12)
    assert torch.equal(sub.label[1], batch.label[2])
    assert batch.history_mask.dtype == torch.bool


def test_write_rejects_ids_outside_the_vocabulary(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    arrays = read_partition(tiny_dataset, schema, schema.partitions[0])
    arrays["item.item_id"][0, 0] = 40
    with pytest.raises(StoreError, match=r"item\.item_id.*outside the vocabulary"):
        write_partition(tiny_dataset, schema, schema.partitions[0], arrays)


def test_write_rejects_missing_columns_and_wrong_widths(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    arrays = read_partition(tiny_dataset, schema, schema.partitions[0])
    bad = dict(arrays)
    del bad["label"]
    with pytest.raises(StoreError, match="missing columns.*label"):
        write_partition(tiny_dataset, schema, schema.partitions[0], bad)
    bad = dict(arrays, label=arrays["label"][:, :5])
    with pytest.raises(StoreError, match="'label'.*shape"):
        write_partition(tiny_dataset, schema, schema.partitions[0], bad)
    bad = dict(arrays, label=np.where(arrays["mask"], np.nan, 0).astype(np.float32))
    with pytest.raises(StoreError, match="non-finite"):
        write_partition(tiny_dataset, schema, schema.partitions[0], bad)


def test_failed_write_leaves_the_old_file_and_no_temp_file(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    part = schema.partitions[0]
    before = (tiny_dataset / part.file_name).read_bytes()
    arrays = read_partition(tiny_dataset, schema, part)
    arrays["label"] = arrays["label"][:, :3]
    with pytest.raises(StoreError):
        write_partition(tiny_dataset, schema, part, arrays)
    assert (tiny_dataset / part.file_name).read_bytes() == before
    assert not list(tiny_dataset.glob(".*tmp"))


def test_read_names_file_and_column_for_missing_or_wrong_columns(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    part = schema.partitions[0]
    path = tiny_dataset / part.file_name
    table = pq.read_table(path)
    pq.write_table(table.drop(["label"]), path)
    with pytest.raises(StoreError, match=r"part-00\.parquet: column 'label' missing"):
        read_partition(tiny_dataset, schema, part)
    pq.write_table(
        table.set_column(table.schema.get_field_index("label"), "label", pa.array([[1.0, 2.0]] * len(table))),
        path,
    )
    with pytest.raises(StoreError, match="'label' has type .*fixed-size list of 12"):
        read_partition(tiny_dataset, schema, part)


def test_truncated_partition_file_is_a_clear_error(tiny_dataset):
    schema = open_dataset(tiny_dataset)
    path = tiny_dataset / schema.partitions[0].file_name
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StoreError, match=r"part-00\.parquet: not a readable Parquet file"):
        read_partition(tiny_dataset, schema, schema.partitions[0])


def test_missing_dataset_schema_and_partition_files(tmp_path, tiny_dataset):
    with pytest.raises(SchemaError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="schema.json: missing"):
        open_dataset(tmp_path / "empty")
    (tiny_dataset / "part-01.parquet").unlink()
    with pytest.raises(SchemaError, match="part-01.parquet"):
        open_dataset(tiny_dataset)


def test_invalid_schema_json_names_the_field(tiny_dataset):
    path = tiny_dataset / "schema.json"
    raw = json.loads(path.read_text())
    raw["history"][0]["item_field"] = "nope"
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="item_field 'nope'"):
        DatasetSchema.load(tiny_dataset)
    raw["history"][0]["item_field"] = "item_id"
    raw["extra_key"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="extra_key"):
        DatasetSchema.load(tiny_dataset)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([], "at least one stage"),
        ([50, 20], "cannot keep 50 of only 40"),
        ([20, 30], "strictly decrease"),
        ([30, 5], "gt_num=10"),
        ([30, 0], "positive"),
    ],
)
def test_keep_sizes_that_do_not_fit_are_rejected(keep, message):
    with pytest.raises(ValueError, match=message):
        check_keep(keep, gt_num=10, num_candidates=40)
    check_keep([30, 20], gt_num=10, num_candidates=40)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from cascade_ranking.data.atomic import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask

"""Random RecFlow-shaped request lists for the performance benchmarks, written with ``data/store.py``.

The schema mirrors the RecFlow store (:func:`cascade_ranking.datasets.recflow.recflow_schema`): 5 user fields
(user, device, age, gender, province), 3 context fields (request weekday, hour, minute), 8 item fields
(video, author, second- and first-level category, upload type, upload weekday, hour, minute) and 5 history
fields sharing the item tables, history length 50; 4 funnel groups of 10 candidates for two stages
(N = 40, keep 30/20), 5 groups for three stages (N = 50, keep 40/30/20); gt_num = 10. Labels follow
RecFlow's layout (the top group holds distinct grades, each lower group one constant).

Ids are random with a power-law popularity (id ``k`` drawn with density ~ ``k ** (-2/3)``), so embedding
lookups hit a realistic mix of hot and cold rows. Only the shapes and the id distribution matter here: the
data carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cascade_ranking.data.loader import to_batch
from cascade_ranking.data.schema import CategoricalField, DatasetSchema, HistoryField, Partition, TrainDefaults
from cascade_ranking.data.store import write_partition, write_schema
from cascade_ranking.types import RequestBatch

GROUP = 10
HISTORY_LENGTH = 50


@dataclass(frozen=True)
class Vocab:
    """Vocabulary sizes (ids ``1..size-1``; 0 = padding). Defaults: RecFlow's 42K users, a 1M-item corpus
    (RecFlow has about 9M videos: ``run.py --items 9000000``)."""

    users: int = 42_474
    devices: int = 42_474
    items: int = 1_000_000
    authors: int = 200_000
    cate_two: int = 1_000
    cate_one: int = 50


def perf_schema(stages: int, vocab: Vocab = Vocab(), requests: int = 0, partitions: int = 1) -> DatasetSchema:
    """The RecFlow-shaped schema for ``stages`` (2 or 3) with ``partitions`` train partitions."""
    if stages not in (2, 3):
        raise ValueError(f"stages must be 2 or 3, got {stages}")
    groups = stages + 2
    time_vocab = {"weekday": 8, "hour": 25, "minute": 61}
    user = {"user_id": vocab.users, "device_id": vocab.devices, "age": 10, "gender": 4, "province": 36}
    item = {
        "video_id": vocab.items,
        "author_id": vocab.authors,
        "cate_two": vocab.cate_two,
        "cate_one": vocab.cate_one,
        "upload_type": 10,
    }
    features = [CategoricalField(name=k, role="user", vocab_size=v) for k, v in user.items()]
    features += [CategoricalField(name=k, role="context", vocab_size=v) for k, v in time_vocab.items()]
    features += [CategoricalField(name=k, role="item", vocab_size=v) for k, v in item.items()]
    features += [CategoricalField(name=f"upload_{k}", role="item", vocab_size=v) for k, v in time_vocab.items()]
    return DatasetSchema(
        name=f"perf-{stages}stage",
        features=features,
        history=[HistoryField(name=k, item_field=k) for k in item],
        history_length=HISTORY_LENGTH,
        num_candidates=groups * GROUP,
        funnel_positions=[f"group_{g}" for g in range(groups)],
        keep=[GROUP * (stages + 1 - i) for i in range(stages)],
        gt_num=GROUP,
        partitions=[Partition(name=f"day-{i:02d}", role="train", num_requests=requests) for i in range(partitions)],
        train_defaults=TrainDefaults(batch_size=1024, passes=1),
    )


def _ids(rng: np.random.Generator, size: int, shape) -> np.ndarray:
    """Power-law ids in ``[1, size)``."""
    return np.minimum((rng.random(shape) ** 3 * (size - 1)).astype(np.int64) + 1, size - 1)


def random_arrays(schema: DatasetSchema, requests: int, seed: int, start_id: int = 0) -> dict[str, np.ndarray]:
    """Store columns for ``requests`` random requests of ``schema`` (every candidate valid, as RecFlow)."""
    rng = np.random.default_rng(seed)
    n, length = schema.num_candidates, schema.history_length
    groups = len(schema.funnel_positions)
    out: dict[str, np.ndarray] = {"request_id": np.arange(start_id, start_id + requests, dtype=np.int64)}
    for f in schema.features:
        shape = (requests, n) if f.role == "item" else (requests,)
        out[f"{f.role}.{f.name}"] = _ids(rng, f.vocab_size, shape)
    valid_len = rng.integers(1, length + 1, requests)
    hist_valid = np.arange(length)[None, :] >= (length - valid_len)[:, None]  # left-padded
    for h in schema.history:
        ids = _ids(rng, schema.feature(h.item_field).vocab_size, (requests, length))
        out[f"history.{h.name}"] = np.where(hist_valid, ids, 0)
    position = np.repeat(np.arange(groups)[::-1], GROUP)  # best group first, as RecFlow ships them
    out["stage"] = np.broadcast_to(position, (requests, n)).astype(np.int8)
    top = np.argsort(rng.random((requests, GROUP)), axis=1)  # a random grade order inside the top group
    label = np.broadcast_to(position.astype(np.float32), (requests, n)).copy()
    label[:, :GROUP] = 30.0 - top
    out["label"] = label
    out["mask"] = np.ones((requests, n), dtype=bool)
    return out


def write_dataset(
    directory: Path, stages: int, requests: int, *, vocab: Vocab = Vocab(), partitions: int = 1, seed: int = 0
) -> DatasetSchema:
    """Write a store of ``partitions`` train partitions of ``requests`` random requests each; return its schema."""
    schema = perf_schema(stages, vocab, requests, partitions)
    write_schema(directory, schema)
    for i, part in enumerate(schema.partitions):
        write_partition(directory, schema, part, random_arrays(schema, requests, seed + i, start_id=i * requests))
    return schema


def random_batches(schema: DatasetSchema, batch_size: int, count: int, seed: int = 0) -> list[RequestBatch]:
    """``count`` in-memory batches (the pre-loaded case: no data loading in the timed loop)."""
    arrays = random_arrays(schema, batch_size * count, seed)
    return [to_batch({k: v[i * batch_size : (i + 1) * batch_size] for k, v in arrays.items()}, schema)
            for i in range(count)]  # fmt: skip


def torch_threads() -> int:
    return torch.get_num_threads()

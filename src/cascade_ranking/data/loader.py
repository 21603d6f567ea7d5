"""Streaming loader: one partition at a time into :class:`RequestBatch` objects, no per-request Python.

A partition is read whole into numpy (a day of RecFlow fits easily; memory stays bounded by the largest
partition, not the dataset). Requests are shuffled within the partition, candidate slots are shuffled
within each request (one ``argsort`` of a random matrix, so position can never leak the label), and the
last partial batch is always yielded.

Speed: both shuffles are applied to the whole partition at once, one gather per column (a candidate column
is gathered through one flat index combining the request order and each request's slot order), so every
batch is a contiguous slice wrapped as tensors without a copy; no per-request or per-batch numpy work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .schema import DatasetSchema, Partition, RequestBatch
from .store import read_partition


def shuffle_candidates(arrays: dict[str, np.ndarray], num_candidates: int, rng: np.random.Generator) -> None:
    """Permute the candidate slots of every request independently, in place (all ``[B, N]`` columns)."""
    num_rows = len(arrays["request_id"])
    order = np.argsort(rng.random((num_rows, num_candidates)), axis=1)
    for name, a in arrays.items():
        if _is_candidate_column(name, a, num_candidates):
            arrays[name] = np.take_along_axis(a, order, axis=1)


def _is_candidate_column(name: str, a: np.ndarray, num_candidates: int) -> bool:
    return a.ndim == 2 and a.shape[1] == num_candidates and (name.startswith("item.") or "." not in name)


def to_batch(arrays: dict[str, np.ndarray], schema: DatasetSchema) -> RequestBatch:
    """Wrap numpy columns (as read by :func:`read_partition`) into a :class:`RequestBatch` (CPU tensors).

    Contiguous columns are shared with the tensors, not copied; ``stage`` becomes int64.
    """

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name]))

    history = {h.name: t(f"history.{h.name}") for h in schema.history}
    if history:
        history_mask = torch.from_numpy(np.not_equal(arrays[f"history.{schema.history[0].name}"], 0))
    else:
        history_mask = torch.zeros(len(arrays["request_id"]), 0, dtype=torch.bool)
    return RequestBatch(
        user={f.name: t(f"user.{f.name}") for f in schema.fields_with_role("user")},
        context={f.name: t(f"context.{f.name}") for f in schema.fields_with_role("context")},
        history=history,
        history_mask=history_mask,
        item={f.name: t(f"item.{f.name}") for f in schema.fields_with_role("item")},
        mask=t("mask"),
        stage=torch.from_numpy(np.ascontiguousarray(arrays["stage"], dtype=np.int64)),
        label=t("label"),
        request_id=t("request_id"),
        soft_label=t("soft_label") if "soft_label" in arrays else None,
    )


def _shuffled(arrays: dict[str, np.ndarray], order: np.ndarray, slots: np.ndarray, num: int) -> dict[str, np.ndarray]:
    """Rows ``order`` of every column, candidate columns with each request's slots permuted by ``slots``.

    Row ``i`` of a candidate column becomes ``a[order[i], slots[order[i]]]``: the same as permuting the slots of
    every request (:func:`shuffle_candidates`) and then taking the rows, in one gather.
    """
    flat = (order[:, None] * num + slots[order]).reshape(-1)  # [R * N] indices into a.reshape(-1)
    out = {}
    for name, a in arrays.items():
        if _is_candidate_column(name, a, num):
            out[name] = a.reshape(-1)[flat].reshape(len(order), num)
        else:
            out[name] = a[order]
        if name == "stage":
            out[name] = out[name].astype(np.int64)
    return out


def iterate_partition(
    directory: str | Path,
    schema: DatasetSchema,
    partition: Partition,
    *,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[RequestBatch]:
    """Yield the batches of one partition.

    Args:
        directory: dataset directory.
        schema: its schema.
        partition: which partition.
        batch_size: requests per batch; the last batch may be smaller (never dropped).
        shuffle: shuffle request order within the partition. Candidate slots are always shuffled
            within each request (seeded by ``rng``) so that slot position carries no information.
        rng: numpy generator (seeded by the caller for reproducibility); a fixed default when ``None``.
        shard: ``(rank, world_size)``: yield only requests ``rank, rank + world, …`` of the (shuffled) order.

    Raises:
        StoreError: the partition file is missing, truncated or does not match the schema.
        ValueError: ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rng = rng if rng is not None else np.random.default_rng(0)
    arrays = read_partition(directory, schema, partition, copy=False)  # gathered below: no copy needed
    num_rows = len(arrays["request_id"])
    order = rng.permutation(num_rows) if shuffle else np.arange(num_rows)
    rank, world = shard
    order = order[rank::world]
    num = schema.num_candidates
    slots = np.argsort(rng.random((num_rows, num)), axis=1)  # the draws of shuffle_candidates
    arrays = _shuffled(arrays, order, slots, num)
    for start in range(0, len(order), batch_size):
        yield to_batch({k: v[start : start + batch_size] for k, v in arrays.items()}, schema)


def iterate_partitions(
    directory: str | Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    **kwargs,
) -> Iterator[RequestBatch]:
    """Stream several partitions in the given (time) order; keyword arguments as :func:`iterate_partition`."""
    for partition in partitions:
        yield from iterate_partition(directory, schema, partition, **kwargs)

"""Streaming loader: one partition at a time into :class:`RequestBatch` objects, no per-request Python.

Memory is bounded by a shuffle window, not by the partition or the dataset: a partition file is read a window
of Parquet row groups at a time (at most ``window`` requests, :data:`DEFAULT_WINDOW`; at least one row group,
:data:`.store.ROW_GROUP_REQUESTS` requests when written by this package). With ``shuffle`` the row groups are
visited in a random order, requests are shuffled within each window (as a tf.data shuffle buffer of
``window`` requests fed by randomly ordered row groups); a partition that fits one window — every MovieLens
week, and any file with a single row group — is shuffled as a whole. Candidate slots are always shuffled within
each request (one ``argsort`` of a random matrix, so position can never leak the label). Batches run across
window boundaries, so a partition of R requests always gives ``ceil(R / batch_size)`` batches, only the last
one partial (and never dropped).

Speed: both shuffles are applied to a whole window at once, one gather per column (a candidate column is
gathered through one flat index combining the request order and each request's slot order), so every batch
within a window is a contiguous slice wrapped as tensors without a copy; no per-request or per-batch numpy
work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..types import RequestBatch
from .schema import DatasetSchema, Partition
from .store import (
    _is_candidate_column,
    check_partition_request_ids,
    read_partition,
    row_group_sizes,
    shuffle_candidates,
)

__all__ = ["DEFAULT_WINDOW", "iterate_partition", "iterate_partitions", "shuffle_candidates", "to_batch"]

#: Requests read, shuffled and held in memory at once (rounded to whole row groups, at least one).
DEFAULT_WINDOW = 32_768


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
    window: int | None = DEFAULT_WINDOW,
) -> Iterator[RequestBatch]:
    """Yield the batches of one partition.

    Args:
        directory: dataset directory.
        schema: its schema.
        partition: which partition.
        batch_size: requests per batch; only the partition's last batch may be smaller (never dropped).
        shuffle: shuffle request order within the partition (within each window when the partition spans
            several; the row groups are then visited in random order). Candidate slots are always shuffled
            within each request (seeded by ``rng``) so that slot position carries no information.
        rng: numpy generator (seeded by the caller for reproducibility); a fixed default when ``None``.
        shard: ``(rank, world_size)``: yield only requests ``rank, rank + world, …`` of the (shuffled) order.
        window: most requests read and held at once, rounded down to whole row groups (at least one);
            ``None`` reads the partition whole. The memory bound of the loader.

    Raises:
        StoreError: the partition file is missing, truncated or does not match the schema (incl. a request
            id repeated anywhere in the partition).
        ValueError: ``batch_size`` or ``window`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if window is not None and window <= 0:
        raise ValueError(f"window must be positive or None, got {window}")
    rng = rng if rng is not None else np.random.default_rng(0)
    # the footer is read only when the partition is larger than a window
    groups = [] if window is None or partition.num_requests <= window else row_group_sizes(directory, partition)
    windows: Iterable[dict[str, np.ndarray]]
    if window is None or len(groups) <= 1:
        windows = [_read_window(directory, schema, partition, None, shuffle, rng)]
    else:
        check_partition_request_ids(directory, partition)
        windows = (
            _read_window(directory, schema, partition, w, shuffle, rng)
            for w in _plan_windows(groups, window, rng.permutation(len(groups)) if shuffle else range(len(groups)))
        )
    yield from _batches(_sharded(windows, shard), batch_size, schema)


def _plan_windows(sizes: list[int], window: int, order) -> list[list[int]]:
    """Consecutive row groups of ``order`` packed into windows of at most ``window`` requests (>= 1 group)."""
    plan: list[list[int]] = []
    rows = 0
    for g in order:
        if plan and rows + sizes[g] <= window:
            plan[-1].append(int(g))
            rows += sizes[g]
        else:
            plan.append([int(g)])
            rows = sizes[g]
    return plan


def _read_window(directory, schema: DatasetSchema, partition: Partition, row_groups, shuffle: bool, rng):
    """One window's arrays, requests (and every request's candidate slots) shuffled, in one gather per column."""
    arrays = read_partition(directory, schema, partition, copy=False, row_groups=row_groups)
    num_rows = len(arrays["request_id"])
    order = rng.permutation(num_rows) if shuffle else np.arange(num_rows)
    num = schema.num_candidates
    slots = np.argsort(rng.random((num_rows, num)), axis=1)  # the draws of shuffle_candidates
    return _shuffled(arrays, order, slots, num)


def _sharded(windows, shard: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``rank, rank + world, ...`` of the concatenated windows."""
    rank, world = shard
    offset = 0
    for arrays in windows:
        n = len(arrays["request_id"])
        if world > 1:
            first = (rank - offset) % world
            arrays = {k: v[first::world] for k, v in arrays.items()}
        offset += n
        yield arrays


def _batches(windows, batch_size: int, schema: DatasetSchema) -> Iterator[RequestBatch]:
    """Consecutive ``batch_size`` slices of the concatenated windows; a batch may join two windows."""
    rest: dict[str, np.ndarray] | None = None
    for arrays in windows:
        n, start = len(arrays["request_id"]), 0
        if rest is not None:
            need = batch_size - len(rest["request_id"])
            joined = {k: np.concatenate([rest[k], v[:need]]) for k, v in arrays.items()}
            if n < need:
                rest = joined
                continue
            yield to_batch(joined, schema)
            rest, start = None, need
        while n - start >= batch_size:
            yield to_batch({k: v[start : start + batch_size] for k, v in arrays.items()}, schema)
            start += batch_size
        if start < n:
            rest = {k: v[start:] for k, v in arrays.items()}
    if rest is not None:
        yield to_batch(rest, schema)


def iterate_partitions(
    directory: str | Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    **kwargs,
) -> Iterator[RequestBatch]:
    """Stream several partitions in the given (time) order; keyword arguments as :func:`iterate_partition`."""
    for partition in partitions:
        yield from iterate_partition(directory, schema, partition, **kwargs)

"""Batches prepared ahead in a background thread while the training step runs (for GPU training).

On a GPU the step is short and the host-side work per batch — reading Parquet row groups, the request and
candidate shuffles, wrapping columns as tensors, copying into page-locked memory — bounds the throughput
unless it overlaps the step. :func:`prefetch` runs an iterator of batches in one background thread, at most
``depth`` batches ahead, and yields exactly the same items in the same order (the source iterator, and any
random generator it draws from, is advanced only by that thread, and the source is exhausted before the last
item's successor is asked for, so a generator's state after the loop is the same as without prefetching).
Numpy, pyarrow and torch release the GIL in their kernels, so the thread runs beside the step.

:func:`pin_batches` is the usual ``prepare`` on CUDA: page-locked host memory makes
``batch.to("cuda", non_blocking=True)`` an asynchronous copy.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..types import RequestBatch

__all__ = ["pin_batches", "prefetch"]

T = TypeVar("T")

_ITEM, _END, _ERROR = 0, 1, 2
_POLL_SECONDS = 0.05


def prefetch(items: Iterable[T], depth: int, *, prepare: Callable[[T], T] | None = None) -> Iterator[T]:
    """Yield ``prepare(x)`` for every ``x`` of ``items``, produced by a background thread ``depth`` items ahead.

    Args:
        items: the source (e.g. :func:`~cascade_ranking.data.loader.iterate_partition`); iterated only by the
            background thread.
        depth: items held ready at most; ``0`` iterates in the caller's thread (no thread, same items).
        prepare: applied to each item in the background thread (e.g. :func:`pin_batches`).

    Raises:
        ValueError: ``depth < 0``.
        Whatever the source or ``prepare`` raises, re-raised in the caller at the item where it happened.

    Closing the returned generator early (``break``, an exception in the loop) stops the thread before
    ``close`` returns.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"prefetch depth must be a non-negative integer, got {depth!r}")
    if depth == 0:
        return (prepare(x) for x in items) if prepare is not None else iter(items)
    return _prefetched(items, depth, prepare)


def _prefetched(items: Iterable[T], depth: int, prepare: Callable[[T], T] | None) -> Iterator[T]:
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put((_ITEM, prepare(x) if prepare is not None else x)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the caller's thread
            put((_ERROR, exc))

    thread = threading.Thread(target=work, name="cascade-ranking-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def pin_batches(batch: RequestBatch) -> RequestBatch:
    """``batch.pin_memory()``: page-locked host copies of every tensor (needs a CUDA runtime).

    Args:
        batch: a CPU batch; every tensor keeps its shape and dtype.

    Raises:
        RuntimeError: no accelerator runtime to pin memory with.
    """
    return batch.pin_memory()

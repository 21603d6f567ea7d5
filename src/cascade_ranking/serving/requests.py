"""Serving requests: the user side of a request (user and context features, behaviour history) and the items
to exclude, validated against the dataset schema, as columns.

Columns (``B`` requests; the same names as the request-list store, so a store partition file is a valid
request file — its candidate columns are ignored):

=====================  ==========================================  ===============================================
column                 type                                        meaning
=====================  ==========================================  ===============================================
``user.<f>``           int64, required                             user field ``f`` (0 = unknown)
``context.<f>``        int64, required                             context field ``f`` (weekday, hour, ...)
``history.<f>``        list<int64> (at most ``L``), optional       history field ``f``, most recent first
                                                                   (as the dataset's; 0 = padding)
``exclude``            list<int64>, optional                       key ids of items never to recommend
``request_id``         int64, optional                             echoed in the output (default 0..B-1)
=====================  ==========================================  ===============================================

Every id must lie in its field's vocabulary ``[0, vocab_size)``; an id outside (e.g. a user id the model never
saw) is rejected with an error naming the column, the request and the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.schema import DatasetSchema
from ..types import RequestBatch

__all__ = ["RequestError", "Requests", "read_requests"]


class RequestError(ValueError):
    """A serving request does not match the model's schema; the message names the field and the request."""


@dataclass(frozen=True)
class Requests:
    """``B`` validated serving requests.

    Attributes:
        user, context: field -> ``[B]`` int64 ids.
        history: history field -> ``[B, L]`` int64 ids (0 = padding), left-aligned.
        exclude: per request, the key ids of items not to recommend (``[E_b]`` int64 each).
        request_id: ``[B]`` int64.
    """

    user: Mapping[str, np.ndarray]
    context: Mapping[str, np.ndarray]
    history: Mapping[str, np.ndarray]
    exclude: Sequence[np.ndarray]
    request_id: np.ndarray

    def __len__(self) -> int:
        return int(self.request_id.shape[0])

    def select(self, rows: slice) -> Requests:
        """The requests ``rows`` (a slice)."""
        return Requests(
            user={n: a[rows] for n, a in self.user.items()},
            context={n: a[rows] for n, a in self.context.items()},
            history={n: a[rows] for n, a in self.history.items()},
            exclude=list(self.exclude[rows]),
            request_id=self.request_id[rows],
        )

    def history_mask(self) -> np.ndarray:
        """``[B, L]`` bool: valid history slots (the first history field's id is non-zero, as in the store)."""
        first = next(iter(self.history.values()), None)
        if first is None:
            return np.zeros((len(self), 0), dtype=bool)
        return first != 0

    def tensors(self) -> dict[str, Any]:
        """``user``, ``context``, ``history`` (dicts of int64 tensors) and ``history_mask`` (``[B, L]`` bool)."""

        def t(d: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
            return {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in d.items()}

        return {
            "user": t(self.user),
            "context": t(self.context),
            "history": t(self.history),
            "history_mask": torch.from_numpy(self.history_mask()),
        }

    @classmethod
    def from_columns(
        cls, schema: DatasetSchema, columns: Mapping[str, Any], *, where: str = "requests", strict: bool = False
    ) -> Requests:
        """Validate request columns (see the module docstring) into :class:`Requests`.

        Args:
            schema: the model's dataset schema.
            columns: column name -> ``[B]`` ids, or for ``history.<f>`` / ``exclude`` a ``[B, W]`` array or a
                list of ``B`` id lists.
            where: names the source in error messages (a file, ``"request body"``).
            strict: reject columns the model does not read (a file may hold others, e.g. a store partition's
                candidates; a JSON body may not).

        Raises:
            RequestError: a missing column (or, with ``strict``, an unknown one), unequal lengths, a history
                longer than ``L`` or of unequal lengths across its fields, an id outside its vocabulary.
        """
        known = {f"{f.role}.{f.name}" for f in schema.features if f.role != "item"}
        known |= {f"history.{h.name}" for h in schema.history} | {"exclude", "request_id"}
        unknown = sorted(set(columns) - known)
        if strict and unknown:
            raise RequestError(f"{where}: unknown fields {unknown}; the model reads {sorted(known)}")
        size = _num_requests(columns, schema, where)
        user: dict[str, np.ndarray] = {}
        context: dict[str, np.ndarray] = {}
        for f in schema.features:
            if f.role == "item":
                continue
            column = f"{f.role}.{f.name}"
            if column not in columns:
                raise RequestError(f"{where}: field {column!r} missing (required: {sorted(known - _optional(schema))})")
            ids = _ids(columns[column], column, where, size)
            _check_vocab(ids, column, f.vocab_size, where)
            (user if f.role == "user" else context)[f.name] = ids
        history = _history(schema, columns, size, where)
        exclude = _lists(columns["exclude"], "exclude", where, size) if "exclude" in columns else None
        if exclude is None:
            exclude = [np.zeros(0, np.int64)] * size
        rid = columns.get("request_id")
        request_id = np.arange(size, dtype=np.int64) if rid is None else _ids(rid, "request_id", where, size)
        return cls(user=user, context=context, history=history, exclude=exclude, request_id=request_id)

    def batch(self, item: Mapping[str, torch.Tensor], mask: torch.Tensor) -> RequestBatch:
        """A :class:`RequestBatch` of these requests with candidates ``item`` (``[B, N]`` per item field).

        ``stage``, ``label`` and ``request_id`` are placeholders (zeros): serving has no labels.
        """
        t = self.tensors()
        return make_batch(t["user"], t["context"], t["history"], t["history_mask"], item, mask)


def make_batch(
    user: Mapping[str, torch.Tensor],
    context: Mapping[str, torch.Tensor],
    history: Mapping[str, torch.Tensor],
    history_mask: torch.Tensor,
    item: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
) -> RequestBatch:
    """A label-free :class:`RequestBatch` (``stage``/``label``/``request_id`` zeros) from feature tensors.

    Args:
        user, context: ``[B]`` int64 per field; history: ``[B, L]`` per field; history_mask: ``[B, L]`` bool;
        item: ``[B, N]`` int64 per item field; mask: ``[B, N]`` bool.
    """
    return RequestBatch(
        user=dict(user),
        context=dict(context),
        history=dict(history),
        history_mask=history_mask,
        item=dict(item),
        mask=mask,
        stage=torch.zeros(mask.shape, dtype=torch.long),
        label=torch.zeros(mask.shape, dtype=torch.float32),
        request_id=torch.zeros(mask.shape[:1], dtype=torch.long),
    )


def read_requests(path: str | Path, schema: DatasetSchema) -> Requests:
    """Read a request Parquet file (columns: see the module docstring; other columns are ignored).

    Raises:
        RequestError: unreadable file or invalid columns (names the file).
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise RequestError(f"{path}: not a readable Parquet file ({exc})") from None
    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise RequestError(f"{path}: column {name!r} has null rows")
        if pa.types.is_fixed_size_list(col.type):
            columns[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            columns[name] = col.to_pylist()
        else:
            columns[name] = col.to_numpy(zero_copy_only=False)
    return Requests.from_columns(schema, columns, where=str(path))


# ----------------------------------------------------------------------------------------------------------
def _optional(schema: DatasetSchema) -> set[str]:
    return {f"history.{h.name}" for h in schema.history} | {"exclude", "request_id"}


def _num_requests(columns: Mapping[str, Any], schema: DatasetSchema, where: str) -> int:
    sizes = {name: len(columns[name]) for name in columns}
    if len(set(sizes.values())) > 1:
        raise RequestError(f"{where}: columns hold different numbers of requests: {sizes}")
    if not sizes or not next(iter(sizes.values())):
        raise RequestError(f"{where}: no request")
    return next(iter(sizes.values()))


def _ids(values: Any, column: str, where: str, size: int) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (size,) or a.dtype.kind not in "iu":
        raise RequestError(f"{where}: {column!r} must hold one integer id per request, got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def _check_vocab(ids: np.ndarray, column: str, vocab: int, where: str) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        raise RequestError(
            f"{where}: {column}={int(ids.reshape(-1)[bad[0]])} (request {int(bad[0]) if ids.ndim == 1 else '?'}) "
            f"is not a known id: the model's vocabulary is [0, {vocab})"
        )


def _lists(values: Any, column: str, where: str, size: int) -> list[np.ndarray]:
    rows = list(values)  # a [B, W] array or B lists
    out = []
    for b, row in enumerate(rows):
        a = np.asarray([] if row is None else row)
        if a.size == 0:
            out.append(np.zeros(0, np.int64))
            continue
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise RequestError(f"{where}: {column!r} of request {b} must be a list of integer ids")
        out.append(a.astype(np.int64))
    if len(out) != size:
        raise RequestError(f"{where}: {column!r} holds {len(out)} lists for {size} requests")
    return out


def _history(schema: DatasetSchema, columns: Mapping[str, Any], size: int, where: str) -> dict[str, np.ndarray]:
    length = schema.history_length
    out: dict[str, np.ndarray] = {}
    lengths: np.ndarray | None = None
    for h in schema.history:
        column = f"history.{h.name}"
        rows = _lists(columns[column], column, where, size) if column in columns else [np.zeros(0, np.int64)] * size
        n = np.array([len(r) for r in rows])
        if (n > length).any():
            b = int(np.argmax(n > length))
            raise RequestError(
                f"{where}: {column!r} of request {b} holds {int(n[b])} items; the model reads at most {length} "
                "(most recent first)"
            )
        if lengths is not None and not np.array_equal(n, lengths):
            b = int(np.argmax(n != lengths))
            raise RequestError(f"{where}: history fields of request {b} have different lengths")
        lengths = n
        a = np.zeros((size, length), dtype=np.int64)
        for b, r in enumerate(rows):
            a[b, : len(r)] = r
        _check_vocab(a, column, schema.feature(h.item_field).vocab_size, where)
        out[h.name] = a
    return out

"""The item catalogue: one row per item, every item field of the dataset schema, in a fixed row order.

Serving selects from the whole catalogue instead of the logged candidates of a request (DESIGN.md section 1.6).
A dataset in the request-list store has no item table of its own, so :meth:`Catalogue.from_dataset` collects
every distinct item that appears as a valid candidate in any partition (all roles: an item's attributes are
not a label, so reading them from the test weeks leaks nothing): the item is identified by the schema's first
item field (its *key*, e.g. ``item_id``); where one key appears with different attributes, the most recent
partition's values win. A catalogue is also written to and read from Parquet (``item.<field>`` int64
columns, one row per item) with :meth:`Catalogue.write` / :meth:`Catalogue.read`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.atomic import atomic_path
from ..data.schema import DatasetSchema
from ..data.store import read_partition

__all__ = ["Catalogue", "CatalogueError"]

log = logging.getLogger(__name__)


class CatalogueError(ValueError):
    """A catalogue (file or arrays) does not match the dataset schema; the message names the file and field."""


@dataclass(frozen=True)
class Catalogue:
    """Every catalogue item's field ids, one row per item, rows sorted by the key field.

    Attributes:
        fields: item field name -> ``[M]`` int64 ids, in schema order; the first is the key (unique, > 0).
        key: name of the key field (the schema's first item field).
    """

    fields: Mapping[str, np.ndarray]
    key: str

    @property
    def size(self) -> int:
        """``M``, the number of items."""
        return int(self.fields[self.key].shape[0])

    @property
    def keys(self) -> np.ndarray:
        """``[M]`` int64 key ids, ascending."""
        return self.fields[self.key]

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Catalogue rows of key ids (any shape), ``-1`` where a key is not in the catalogue."""
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys).clip(0, max(self.size - 1, 0))
        return np.where(self.keys[pos] == keys, pos, -1) if self.size else np.full(keys.shape, -1)

    @classmethod
    def from_arrays(
        cls, schema: DatasetSchema, fields: Mapping[str, np.ndarray], *, where: str = "catalogue"
    ) -> Catalogue:
        """Validate ``fields`` (every item field of ``schema``, ``[M]`` ids) and sort the rows by the key.

        Raises:
            CatalogueError: a missing field, unequal lengths, an id outside ``[1, vocab_size)`` for the key or
                ``[0, vocab_size)`` for the others, a duplicate key, or no item at all; names ``where``.
        """
        items = schema.fields_with_role("item")
        key = items[0].name
        out: dict[str, np.ndarray] = {}
        for f in items:
            if f.name not in fields:
                raise CatalogueError(f"{where}: item field {f.name!r} missing (has {sorted(fields)})")
            a = np.asarray(fields[f.name])
            if a.ndim != 1 or a.dtype.kind not in "iu":
                raise CatalogueError(f"{where}: item field {f.name!r} must be [M] integer ids, got {a.dtype} {a.shape}")
            low = 1 if f.name == key else 0
            if a.size and (a.min() < low or a.max() >= f.vocab_size):
                raise CatalogueError(f"{where}: item field {f.name!r} has ids outside [{low}, {f.vocab_size})")
            out[f.name] = a.astype(np.int64)
        lengths = {len(a) for a in out.values()}
        if len(lengths) != 1 or not lengths.pop():
            raise CatalogueError(f"{where}: item fields must be non-empty and of one length, got {_lengths(out)}")
        order = np.argsort(out[key], kind="stable")
        out = {n: a[order] for n, a in out.items()}
        if np.any(out[key][1:] == out[key][:-1]):
            raise CatalogueError(f"{where}: duplicate {key!r} ids (the key must identify an item)")
        return cls(fields=out, key=key)

    @classmethod
    def from_dataset(cls, directory: str | Path, schema: DatasetSchema) -> Catalogue:
        """Every item that is a valid candidate in some partition of the dataset (see the module docstring).

        Raises:
            StoreError: a partition file is unreadable or does not match the schema.
            CatalogueError: the dataset holds no valid candidate.
        """
        names = [f.name for f in schema.fields_with_role("item")]
        chunks: list[dict[str, np.ndarray]] = []
        for partition in reversed(schema.partitions):  # most recent first: np.unique keeps the first occurrence
            arrays = read_partition(directory, schema, partition, copy=False)
            valid = arrays["mask"]
            chunks.append({n: arrays[f"item.{n}"][valid] for n in names})
        joined = {n: np.concatenate([c[n] for c in chunks]) if chunks else np.zeros(0, np.int64) for n in names}
        _, first = np.unique(joined[names[0]], return_index=True)
        log.info("catalogue of %s: %d items from %d partitions", directory, len(first), len(chunks))
        return cls.from_arrays(schema, {n: a[first] for n, a in joined.items()}, where=f"catalogue of {directory}")

    @classmethod
    def read(cls, path: str | Path, schema: DatasetSchema) -> Catalogue:
        """Read a catalogue Parquet file (``item.<field>`` int64 columns).

        Raises:
            CatalogueError: unreadable file, a missing column or bad ids (names the file and the column).
        """
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise CatalogueError(f"{path}: not a readable Parquet file ({exc})") from None
        fields = {}
        for f in schema.fields_with_role("item"):
            column = f"item.{f.name}"
            if column not in table.column_names:
                raise CatalogueError(f"{path}: column {column!r} missing (columns: {table.column_names})")
            fields[f.name] = table.column(column).to_numpy()
        return cls.from_arrays(schema, fields, where=str(path))

    def write(self, path: str | Path) -> None:
        """Write the catalogue as Parquet (``item.<field>`` columns), atomically."""
        table = pa.table({f"item.{n}": pa.array(a, pa.int64()) for n, a in self.fields.items()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)


def _lengths(fields: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {n: len(a) for n, a in fields.items()}

"""The on-disk request-list store: ``schema.json`` + one Parquet file per partition.

One row per request. Columns (B = rows, L = ``history_length``, N = ``num_candidates``):

=====================  ====================================  ==========================================
column                 Arrow type                            meaning
=====================  ====================================  ==========================================
``request_id``         int64                                 unique request id
``user.<f>``           int64                                 user field ``f``
``context.<f>``        int64                                 context field ``f``
``history.<f>``        fixed_size_list<int64>[L]             history field ``f`` (0 = padding)
``item.<f>``           fixed_size_list<int64>[N]             candidate item field ``f`` (0 = padding)
``mask``               fixed_size_list<bool>[N]              valid candidate slots
``stage``              fixed_size_list<int8>[N]              funnel position (0 = filtered first)
``label``              fixed_size_list<float32>[N]           graded relevance, higher is better
``soft_label``         fixed_size_list<float32>[N] (opt.)    a ranking model's prediction
=====================  ====================================  ==========================================

Fixed-size list columns load into ``[B, N]`` numpy arrays by a reshape of the flat child array, with no
per-request Python. Every write goes to a temporary file in the same directory and is renamed into place,
so a crash never leaves a half-written partition or schema. Files are written in row groups of
``ROW_GROUP_REQUESTS`` requests, the unit the loader reads: a partition of any size streams through a bounded
window of row groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_text_atomic
from .schema import SCHEMA_FILE, DatasetSchema, Partition, SchemaError

__all__ = [
    "PARQUET_COMPRESSION",
    "ROW_GROUP_REQUESTS",
    "StoreError",
    "check_partition_request_ids",
    "check_unique_request_ids",
    "expected_columns",
    "open_dataset",
    "read_partition",
    "row_group_sizes",
    "shuffle_candidates",
    "validate_arrays",
    "write_partition",
    "write_schema",
]

#: Codec of the partition files: LZ4 decodes about 1.3x faster than zstd (files about 1.3x larger), and a
#: training run reads every partition once per pass. Any codec reads back; only new files use this one.
PARQUET_COMPRESSION = "lz4"

#: Requests per Parquet row group of a partition file: the unit the loader reads, so that a partition of any
#: size is streamed through a bounded shuffle window (:func:`.loader.iterate_partition`), never read whole.
ROW_GROUP_REQUESTS = 8192

_CANDIDATE_COLUMNS = {
    "mask": (np.bool_, pa.bool_()),
    "stage": (np.int8, pa.int8()),
    "label": (np.float32, pa.float32()),
}


class StoreError(ValueError):
    """A partition file does not match the dataset's schema (names the file and the column)."""


def expected_columns(schema: DatasetSchema) -> dict[str, tuple[np.dtype, int | None]]:
    """Map column name -> (numpy dtype, list width or None for scalars) that a partition must hold."""
    cols: dict[str, tuple[np.dtype, int | None]] = {"request_id": (np.dtype(np.int64), None)}
    for f in schema.features:
        width = schema.num_candidates if f.role == "item" else None
        cols[f"{f.role}.{f.name}"] = (np.dtype(np.int64), width)
    for h in schema.history:
        cols[f"history.{h.name}"] = (np.dtype(np.int64), schema.history_length)
    for name, (dtype, _) in _CANDIDATE_COLUMNS.items():
        cols[name] = (np.dtype(dtype), schema.num_candidates)
    return cols


def _vocab_sizes(schema: DatasetSchema) -> dict[str, int]:
    vocab = {f"{f.role}.{f.name}": f.vocab_size for f in schema.features}
    vocab.update({f"history.{h.name}": schema.feature(h.item_field).vocab_size for h in schema.history})
    return vocab


def validate_arrays(where: str, schema: DatasetSchema, arrays: dict[str, np.ndarray]) -> None:
    """Check values against the schema: ids inside their vocabulary, funnel positions known, floats finite,
    request ids unique. Raises :class:`StoreError` naming ``where`` (file or partition) and the column."""
    vocab = _vocab_sizes(schema)
    bounds = {**vocab, "stage": len(schema.funnel_positions)}
    for name, a in arrays.items():
        if not a.size:
            continue
        if name in bounds:
            # one pass: viewed as unsigned, negative ids wrap above every bound (min and max only on failure)
            as_unsigned = a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "i" else a
            if as_unsigned.max() >= bounds[name]:
                lo, hi = a.min(), a.max()
                what = "funnel positions" if name == "stage" else "the vocabulary"
                raise StoreError(f"{where}, column {name!r}: values in [{lo}, {hi}] outside {what} [0, {bounds[name]})")
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            raise StoreError(f"{where}, column {name!r}: non-finite values (NaN or inf)")
    ids = arrays.get("request_id")
    if ids is not None:
        check_unique_request_ids(where, ids)


def check_unique_request_ids(where: str, ids: np.ndarray) -> None:
    """Raise :class:`StoreError` naming ``where`` and example ids when ``ids`` (``[B]``) has a repeat."""
    values, counts = np.unique(ids, return_counts=True)
    if len(values) != len(ids):
        raise StoreError(f"{where}, column 'request_id': duplicate request ids, e.g. {values[counts > 1][:3].tolist()}")


def check_partition_request_ids(directory: str | Path, partition: Partition) -> None:
    """Request ids unique over a whole partition file, reading that column only (what a reader of row groups
    cannot see). Raises :class:`StoreError` naming the file."""
    path = Path(directory) / partition.file_name
    try:
        ids = pq.read_table(path, columns=["request_id"]).column("request_id").to_numpy()
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise StoreError(f"{path}: cannot read column 'request_id' ({exc})") from exc
    check_unique_request_ids(str(path), ids)


def _arrow_type(dtype: np.dtype) -> pa.DataType:
    for _, (np_t, pa_t) in _CANDIDATE_COLUMNS.items():
        if np.dtype(np_t) == dtype:
            return pa_t
    return pa.from_numpy_dtype(dtype)


def shuffle_candidates(arrays: dict[str, np.ndarray], num_candidates: int, rng: np.random.Generator) -> None:
    """Permute the candidate slots of every request independently, in place (all ``[B, N]`` columns: ``item.*``,
    ``mask``, ``stage``, ``label``, ``soft_label``), with ``rng``: how builders write candidates in a seeded random
    order and how the loader shuffles them again (re-exported by :mod:`.loader`)."""
    num_rows = len(arrays["request_id"])
    order = np.argsort(rng.random((num_rows, num_candidates)), axis=1)
    for name, a in arrays.items():
        if _is_candidate_column(name, a, num_candidates):
            arrays[name] = np.take_along_axis(a, order, axis=1)


def _is_candidate_column(name: str, a: np.ndarray, num_candidates: int) -> bool:
    return a.ndim == 2 and a.shape[1] == num_candidates and (name.startswith("item.") or "." not in name)


def write_partition(
    directory: str | Path, schema: DatasetSchema, partition: Partition, arrays: dict[str, np.ndarray]
) -> Path:
    """Write one partition's requests to ``DIR/<partition>.parquet`` atomically.

    Args:
        directory: dataset directory.
        schema: the dataset schema (defines the expected columns, see the module docstring).
        partition: which partition file to write.
        arrays: column name -> array, ``[B]`` for scalar columns and ``[B, W]`` for list columns;
            ``soft_label`` is optional.

    Raises:
        StoreError: a column is missing or unexpected, has the wrong shape, or ids fall outside the vocabulary.
    """
    expected = expected_columns(schema)
    optional = {"soft_label": (np.dtype(np.float32), schema.num_candidates)}
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected) - set(optional))
    if missing or unknown:
        raise StoreError(f"partition {partition.name!r}: missing columns {missing}, unexpected columns {unknown}")
    num_rows = len(arrays["request_id"])
    where = f"partition {partition.name!r}"
    converted: dict[str, np.ndarray] = {}
    for name, (dtype, width) in {**expected, **{k: v for k, v in optional.items() if k in arrays}}.items():
        raw = np.asarray(arrays[name])
        if dtype.kind in "iu" and raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
            raise StoreError(f"{where}, column {name!r}: fractional values where integer ids are expected")
        a = np.ascontiguousarray(raw, dtype=dtype)
        want = (num_rows,) if width is None else (num_rows, width)
        if a.shape != want:
            raise StoreError(f"{where}, column {name!r}: shape {a.shape}, expected {want}")
        converted[name] = a
    validate_arrays(where, schema, converted)
    columns = {}
    for name, a in converted.items():
        if a.ndim == 1:
            columns[name] = pa.array(a)
        else:
            flat = pa.array(a.reshape(-1), type=_arrow_type(a.dtype))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, a.shape[1])
    table = pa.table(columns)
    path = Path(directory) / partition.file_name
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION, row_group_size=ROW_GROUP_REQUESTS)
    return path


def write_schema(directory: str | Path, schema: DatasetSchema) -> Path:
    """Write ``DIR/schema.json`` atomically."""
    path = Path(directory) / SCHEMA_FILE
    write_text_atomic(path, schema.to_json())
    return path


def row_group_sizes(directory: str | Path, partition: Partition) -> list[int]:
    """Requests in each Parquet row group of a partition file, in file order (read from the footer only).

    Raises:
        StoreError: the file is missing or its footer is unreadable (e.g. truncated).
    """
    path = Path(directory) / partition.file_name
    if not path.is_file():
        raise StoreError(f"{path}: partition file missing (listed in {SCHEMA_FILE})")
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: not a readable Parquet file ({exc})") from exc
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if sum(sizes) != partition.num_requests:
        raise StoreError(
            f"{path}: holds {sum(sizes)} requests, {SCHEMA_FILE} says {partition.num_requests} (file replaced?)"
        )
    return sizes


def read_partition(
    directory: str | Path,
    schema: DatasetSchema,
    partition: Partition,
    *,
    copy: bool = True,
    row_groups: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Read one partition into numpy arrays (``[B]`` or ``[B, W]``), checking it against the schema.

    With ``copy=False`` the arrays may be read-only views of Arrow's buffers (no copy of the partition), for
    callers that only read them (the loader, which gathers every column anyway). With ``row_groups`` only those
    Parquet row groups are read, in the order given (see :func:`row_group_sizes`); request-id uniqueness is then
    checked within what was read only.

    Raises:
        StoreError: the file is missing or unreadable (e.g. truncated), a column is missing, has the wrong
            width or type, or holds bad values (ids outside the vocabulary, unknown funnel positions, NaN/inf,
            duplicate request ids). The message names the file and the column.
    """
    path = Path(directory) / partition.file_name
    if not path.is_file():
        raise StoreError(f"{path}: partition file missing (listed in {SCHEMA_FILE})")
    try:
        table = pq.read_table(path) if row_groups is None else pq.ParquetFile(path).read_row_groups(list(row_groups))
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: not a readable Parquet file ({exc})") from exc
    out: dict[str, np.ndarray] = {}
    expected = expected_columns(schema)
    if "soft_label" in table.column_names:
        expected["soft_label"] = (np.dtype(np.float32), schema.num_candidates)
    for name, (dtype, width) in expected.items():
        if name not in table.column_names:
            raise StoreError(f"{path}: column {name!r} missing (columns: {table.column_names})")
        col = table.column(name).combine_chunks()
        if width is None:
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                raise StoreError(f"{path}: column {name!r} holds lists, expected a scalar per request")
            values = col
        else:
            if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != width:
                raise StoreError(f"{path}: column {name!r} has type {col.type}, expected a fixed-size list of {width}")
            if col.null_count:
                raise StoreError(f"{path}: column {name!r} has null rows")
            values = col.flatten()
        if values.null_count:
            raise StoreError(f"{path}: column {name!r} has null values")
        if dtype.kind in "iub" and not (pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)):
            raise StoreError(f"{path}: column {name!r} holds {values.type}, expected integers")
        try:
            a = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise StoreError(f"{path}: column {name!r} is not convertible to {dtype} ({exc})") from exc
        if copy and not a.flags.writeable:  # Arrow buffers are immutable; callers get ordinary arrays
            a = a.copy()
        out[name] = a if width is None else a.reshape(len(table), width)
    if row_groups is None and len(table) != partition.num_requests:
        raise StoreError(
            f"{path}: holds {len(table)} requests, {SCHEMA_FILE} says {partition.num_requests} (file replaced?)"
        )
    validate_arrays(str(path), schema, out)
    return out


def open_dataset(directory: str | Path) -> DatasetSchema:
    """Load and check a dataset directory's schema; every listed partition file must exist."""
    schema = DatasetSchema.load(directory)
    missing = [p.file_name for p in schema.partitions if not (Path(directory) / p.file_name).is_file()]
    if missing:
        raise SchemaError(f"{directory}: partition files listed in {SCHEMA_FILE} are missing: {missing}")
    return schema

"""Reading a long table with DuckDB for :mod:`.table`: files, column checks, normalised SQL expressions.

SRC is a file or a folder of Parquet (``.parquet``), CSV (``.csv``, ``.csv.gz``) or JSON-lines (``.jsonl``,
``.ndjson``, ``.json``) files, one format; files whose names start with ``.`` or ``_`` are skipped (``_SUCCESS``).
Folders named ``key=value`` (hive partitions) add a column ``key``. Every mapped column is checked in every
file before any row is read: missing, or of a type the mapping cannot use, is a :class:`TableFormatError`
naming the file, the column and its role in the mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .table_mapping import TableMapping

__all__ = [
    "FILE_COLUMN",
    "SourceFiles",
    "TableFormatError",
    "check_columns",
    "column_kind",
    "fetch_one",
    "describe_columns",
    "epoch_us",
    "list_sources",
    "local_time",
    "mapped_columns",
    "quote",
    "sql_string",
]

#: Column DuckDB adds with each row's source file (named in error messages).
FILE_COLUMN = "_src_file"

_SUFFIXES = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
#: What a column may hold, by its role: DuckDB type kinds (see :func:`column_kind`).
_KINDS = {
    "id": ("integer", "string"),
    "time": ("integer", "timestamp", "timestamptz", "date", "string"),
    "categorical": ("integer", "string", "boolean"),
    "numeric": ("integer", "float", "boolean"),
    "feedback": ("integer", "float", "boolean"),
    "list": ("list", "string"),
}
_KIND_WORDS = {"integer": "integer", "float": "float", "string": "string", "boolean": "boolean",
               "timestamp": "timestamp", "timestamptz": "timestamp", "date": "date", "list": "list"}  # fmt: skip


class TableFormatError(ValueError):
    """A long table or events table does not match the mapping: one line naming the file, the column and an
    example row (and, where dropping makes sense, that ``--on-error drop`` would drop such rows)."""


def fetch_one(con, sql: str, params: list | None = None) -> tuple | None:
    """The first row of ``sql`` (the result is read to its end, as DuckDB requires before the next query)."""
    rows = con.execute(sql, params) if params is not None else con.execute(sql)
    found = rows.fetchall()
    return found[0] if found else None


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def column_kind(duck_type: str) -> str:
    """The kind of a DuckDB type name: integer, float, string, boolean, timestamp, timestamptz, date, list, other."""
    t = duck_type.upper()
    if t.endswith("[]"):
        return "list"
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"):
        return "integer"
    if t in ("FLOAT", "DOUBLE", "REAL") or t.startswith("DECIMAL"):
        return "float"
    if t == "VARCHAR":
        return "string"
    if t == "BOOLEAN":
        return "boolean"
    if t in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return "timestamptz"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    return "date" if t == "DATE" else "other"


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((f for s, f in _SUFFIXES.items() if name.endswith(s)), None)


@dataclass(frozen=True)
class SourceFiles:
    """The files of a long table (or events table), their format and whether they sit in hive folders."""

    root: Path
    files: tuple[Path, ...]
    format: str
    hive: bool

    def reader(self, files: Sequence[Path] | None = None) -> str:
        """A DuckDB table function reading ``files`` (default all) with the source file as :data:`FILE_COLUMN`."""
        names = "[" + ", ".join(sql_string(str(f)) for f in (files or self.files)) + "]"
        opts = f"filename={sql_string(FILE_COLUMN)}, union_by_name=true, hive_partitioning={str(self.hive).lower()}"
        if self.format == "parquet":
            return f"read_parquet({names}, {opts})"
        if self.format == "csv":
            return f"read_csv({names}, {opts}, header=true)"
        return f"read_json({names}, {opts}, format='newline_delimited')"

    def column_types(self, con) -> dict[Path, dict[str, str]]:
        """Column name -> DuckDB type name, for every file."""
        out = {}
        for f in self.files:
            rows = con.execute(f"DESCRIBE SELECT * FROM {self.reader([f])}").fetchall()
            out[f] = {r[0]: r[1] for r in rows if r[0] != FILE_COLUMN}
        return out


def list_sources(src: str | Path, what: str = "SRC") -> SourceFiles:
    """The data files of ``src`` (a file or a folder searched recursively), sorted by path.

    Raises:
        TableFormatError: ``src`` does not exist, holds no supported file, or mixes formats.
    """
    root = Path(src)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
            and _format_of(p)
        )
    else:
        raise TableFormatError(f"{what}={str(root)!r}: no such file or folder")
    formats = sorted({_format_of(f) or "unknown" for f in files})
    if not files or formats == ["unknown"]:
        raise TableFormatError(f"{root}: no Parquet, CSV or JSON-lines file ({', '.join(_SUFFIXES)})")
    if len(formats) > 1:
        raise TableFormatError(f"{root}: mixes file formats {formats}; convert one format at a time")
    hive = root.is_dir() and any("=" in part for f in files for part in f.relative_to(root).parts[:-1])
    return SourceFiles(root=root, files=tuple(files), format=formats[0], hive=hive)


def mapped_columns(mapping: TableMapping) -> dict[str, str]:
    """Long-table column -> its role (a key of the allowed kinds), for every column the mapping names."""
    cols: dict[str, str] = {mapping.request.id: "id", mapping.request.time: "time", mapping.funnel.column: "id"}
    for f in (*mapping.user, *mapping.context, *mapping.item):
        if f.column is not None:
            cols[f.column] = f.type
    for c in mapping.label.columns:
        cols[c] = "feedback"
    if mapping.history is not None and mapping.history.lists is not None:
        for c in mapping.history.lists.values():
            cols[c] = "list"
    return cols


def check_columns(types: dict[Path, dict[str, str]], wanted: dict[str, str], describe: dict[str, str]) -> None:
    """Every ``wanted`` column (name -> role kind key) in every file, of an allowed kind.

    ``describe`` maps a column to the mapping key that names it (used in the message).

    Raises:
        TableFormatError: ``{file}: column 'c' missing (mapping key; columns: [...])`` or
            ``{file}: column 'c' has type T, expected K (mapping key)``.
    """
    for path, cols in types.items():
        for col, role in wanted.items():
            if col not in cols:
                raise TableFormatError(f"{path}: column {col!r} missing ({describe[col]}; columns: {sorted(cols)})")
            kind = column_kind(cols[col])
            if kind not in _KINDS[role]:
                allowed = " or ".join(dict.fromkeys(_KIND_WORDS[k] for k in _KINDS[role]))
                raise TableFormatError(
                    f"{path}: column {col!r} has type {cols[col]}, expected {allowed} ({describe[col]})"
                )


def describe_columns(mapping: TableMapping) -> dict[str, str]:
    """Long-table column -> the mapping key that names it (for messages)."""
    out = {
        mapping.request.id: "request.id",
        mapping.request.time: "request.time",
        mapping.funnel.column: "funnel.column",
    }
    for role, specs in (("user", mapping.user), ("context", mapping.context), ("item", mapping.item)):
        for f in specs:
            if f.column is not None:
                out.setdefault(f.column, f"{role}.{f.name}")
    for c in mapping.label.columns:
        out.setdefault(c, "label.column" if mapping.label.column else f"label.sum.{c}")
    if mapping.history is not None and mapping.history.lists is not None:
        for name, c in mapping.history.lists.items():
            out.setdefault(c, f"history.lists.{name}")
    return out


def epoch_us(column: str, kind: str, unit: str, time_zone: str) -> str:
    """SQL: ``column`` as Unix microseconds (integers in ``unit``; naive values are local in ``time_zone``)."""
    c = quote(column)
    if kind == "integer":
        return f"(CAST({c} AS BIGINT) * {_MICROS[unit]})"
    if kind == "timestamptz":
        return f"epoch_us({c})"
    cast = f"TRY_CAST({c} AS TIMESTAMP)" if kind == "string" else f"CAST({c} AS TIMESTAMP)"
    return f"epoch_us(timezone({sql_string(time_zone)}, {cast}))"


def local_time(us: str, time_zone: str) -> str:
    """SQL: Unix microseconds ``us`` as a naive local timestamp in ``time_zone``."""
    return f"timezone({sql_string(time_zone)}, make_timestamptz({us}))"

"""Bring your own cascade logs: a long table (one row per request x candidate) -> the request-list store.

``cascade-ranking prepare table SRC OUT --mapping mapping.yaml`` (:func:`convert_table`). The mapping
(:mod:`.table_mapping`) names the request id and time, the user, context and item fields, the funnel-position
column and its stages, the label, the behaviour history, the candidates per request, the partitions and the
cascade. The output is an ordinary store dataset (:mod:`cascade_ranking.data.store`), plus
``vocabulary/<role>.<field>.parquet`` (``value``, ``id``) for every categorical field, so ids can be mapped
back to the source values; numeric cut points are in ``schema.json``'s provenance.

**Engine: DuckDB.** The work is SQL over columnar data: group rows into requests, rank candidates within a
request, join vocabularies, an as-of join of requests with an events table. DuckDB runs these vectorised
on any number of threads with a hard ``memory_limit`` and spills sorts, joins, aggregates and windows to
disk past it, reads Parquet, CSV and JSON-lines (hive folders included) directly, and handles time zones
(ICU). pyarrow compute has no windows, as-of join or spilling (a 20M-row table must fit in memory);
polars' streaming engine does not cover windows and as-of joins out of core. No per-row Python: Python
only moves whole Arrow columns into ``[B, N]`` numpy arrays by a scatter (``out[request, slot] = values``).

**Steps.** (1) Every mapped column is checked in every file (missing or unusable type: an error naming the
file). (2) One scan normalises the rows into a table of DuckDB's working database (a temporary folder beside
OUT), with the request time as Unix microseconds, the partition start (``date_trunc`` of the local time in
``partitions.time_zone``), the stage index and the label, and checks each row: null request id, time or item
id; a stage not among ``funnel.stages``; a null or non-finite feedback value. (3) A request whose rows fall in
two partitions, and duplicate (request, item) rows, are found by grouping. (4) Requests (user and context
values from one of its rows, time = its earliest row's), partitions and roles; vocabularies and numeric
cut points fitted. (5) Per partition: the requests, the kept candidates (``candidates``: deepest stage
first, ties and the lowest kept stage in a seeded pseudo-random order ``hash(request, item, seed)``, the same
order for a given DuckDB version; then the slots of each request permuted by
:func:`~cascade_ranking.data.store.shuffle_candidates` seeded by (seed, CRC-32 of the partition name), so
position never leaks the stage), the histories, written with :func:`~cascade_ranking.data.store.write_partition`.

**Memory.** DuckDB stays under ``memory_limit`` (spilling to the working folder); Python holds one
partition's store columns at a time (about ``N * (8 * item fields + 6)`` bytes per request, plus
``8 * L * history fields``); history list columns are stored per row in the working database, as in the
source (an events table is the lighter way at scale). ``benchmarks/convert_table.py`` measures a
20-million-row table on 2 threads.

**Bad input** raises :class:`TableFormatError`: one line naming the file, the column and an example row.
With ``on_error="drop"`` (``--on-error drop``) bad rows are dropped instead and counted by reason
(:attr:`TableReport.dropped`, also in the provenance): rows with a null id or time, an unknown stage or a
null or non-finite feedback value; every row of a request spread over two partitions; duplicate (request,
item) rows beyond the one at the deepest stage (then the highest label); events with a null user, time or
item, or naming an item that is no candidate's. Missing columns, wrong types and history lists of unequal
lengths always raise. Nothing half-written stays: the dataset is written into a temporary
folder that replaces OUT only when complete.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data.atomic import staged_directory
from ..data.schema import (
    SCHEMA_FILE,
    CategoricalField,
    DatasetSchema,
    HistoryField,
    Partition,
    PartitionRole,
    Role,
    TrainDefaults,
    roles_in_time_order,
)
from ..data.store import shuffle_candidates, write_partition, write_schema
from .table_history import history_arrays, load_events
from .table_mapping import DERIVED_VOCAB, FeatureSpec, TableMapping
from .table_source import (
    FILE_COLUMN,
    SourceFiles,
    TableFormatError,
    check_columns,
    column_kind,
    describe_columns,
    epoch_us,
    fetch_one,
    list_sources,
    local_time,
    mapped_columns,
    quote,
    sql_string,
)

__all__ = ["CONVERTER_VERSION", "OnError", "TableFormatError", "TableReport", "convert_table"]

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
OnError = Literal["raise", "drop"]
_DROP_HINT = "--on-error drop drops them"
_NAME_FORMAT = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "week": "week-%Y-%m-%d"}
_DERIVE_SQL = {"weekday": "isodow({t})", "hour": "hour({t}) + 1", "minute": "minute({t}) + 1"}


@dataclass(frozen=True)
class TableReport:
    """What :func:`convert_table` wrote: the schema, rows read, requests written, and rows dropped by reason."""

    schema: DatasetSchema
    rows: int
    requests: int
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Encoding:
    """How one field's raw values become ids: a vocabulary table (categorical) or cut points (numeric)."""

    vocab_size: int
    table: str | None = None
    edges: list[float] | None = None


@contextmanager
def _duckdb(out: Path, threads: int, memory_limit: str) -> Iterator[Any]:
    """A DuckDB connection on a working database in a temporary folder beside ``out`` (deleted at the end)."""
    import duckdb

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    con = None
    try:
        config: dict[str, str | bool | int | float | list[str]] = {
            "threads": threads,
            "memory_limit": memory_limit,
            "temp_directory": str(work / "spill"),
        }
        con = duckdb.connect(str(work / "work.duckdb"), config=config)
        con.sql("SET TimeZone = 'UTC'")
        yield con
    finally:
        if con is not None:
            con.close()
        shutil.rmtree(work, ignore_errors=True)


def convert_table(
    src: str | Path,
    out: str | Path,
    mapping: TableMapping,
    *,
    on_error: OnError = "raise",
    threads: int = 2,
    memory_limit: str = "1GB",
) -> TableReport:
    """Convert a long table (one row per request x candidate) into a store dataset at ``out``.

    Args:
        src: a Parquet, CSV or JSON-lines file, or a folder of them (hive partition folders allowed).
        out: the dataset folder to write (replaced atomically if it holds a previous dataset).
        mapping: which column is what and how the dataset is laid out (:class:`.TableMapping`).
        on_error: ``"raise"`` (default) stops at the first bad row; ``"drop"`` drops and counts bad rows.
        threads: DuckDB threads.
        memory_limit: DuckDB's memory limit (e.g. ``"1GB"``); past it DuckDB spills to disk.

    Returns:
        A :class:`TableReport` (the written schema, counts, dropped rows by reason).

    Raises:
        TableFormatError: missing or unusable columns, bad rows (see the module docstring), no train
            partition; names the file, the column and an example row. Nothing is written then.
        ValueError: ``out`` is ``src`` or an unrelated non-empty folder.
    """
    try:
        import duckdb
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "prepare table needs DuckDB: pip install 'cascade-ranking[table]' (or pip install duckdb)"
        ) from None
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'drop'")
    start = time.perf_counter()
    source = list_sources(src)
    out = Path(out)
    if out.resolve() == source.root.resolve() or source.root.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"out={str(out)!r} would replace the source {str(source.root)!r}")
    with staged_directory(out, marker=SCHEMA_FILE) as tmp, _duckdb(out, threads, memory_limit) as con:
        try:
            report = _Conversion(con, mapping, source, on_error).run(tmp)
        except duckdb.Error as exc:
            raise TableFormatError(f"{source.root}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    logger.info("%s: %d rows -> %d requests in %s", mapping.name, report.rows, report.requests, out)
    return TableReport(report.schema, report.rows, report.requests, report.dropped, time.perf_counter() - start)


class _Conversion:
    """One conversion: the DuckDB tables ``rows``, ``req`` (requests), ``roles``, ``v_<field>``, ``events``."""

    def __init__(self, con, mapping: TableMapping, source: SourceFiles, on_error: OnError) -> None:
        self.con, self.m, self.source, self.on_error = con, mapping, source, on_error
        self.dropped: dict[str, int] = {}
        self.encodings: dict[str, _Encoding] = {}
        self.types: dict[str, str] = {}

    # -- 1-3: read, normalise, check ---------------------------------------------------------------
    def run(self, tmp: Path) -> TableReport:
        self._check_columns()
        num_rows = self._load_rows()
        self._check_spread()
        self._check_duplicates()
        self._make_requests()
        self._check_history_lists()
        parts = self._partitions()
        if self.m.history is not None and self.m.history.events is not None:
            self.dropped.update(load_events(self.con, self.m, self.on_error, self.types))
        self._fit_encodings()
        schema = self._schema([])
        written = [self._write_partition(tmp, schema, p) for p in parts]
        self._write_vocabularies(tmp)
        schema = self._schema(written)
        write_schema(tmp, schema)
        return TableReport(schema, num_rows, sum(p.num_requests for p in written), dict(self.dropped))

    def _check_columns(self) -> None:
        per_file = self.source.column_types(self.con)
        check_columns(per_file, mapped_columns(self.m), describe_columns(self.m))
        union = self.con.execute(f"DESCRIBE SELECT * FROM {self.source.reader()}").fetchall()
        self.types = {r[0]: r[1] for r in union}

    def _kind(self, column: str) -> str:
        return column_kind(self.types[column])

    def _select_list(self) -> list[tuple[str, str]]:
        """(SQL expression, alias) pairs normalising a long-table row (see the module docstring)."""
        m = self.m
        stage_cases = " ".join(f"WHEN {sql_string(s)} THEN {i}" for i, s in enumerate(m.funnel.stages))
        label = " + ".join(f"CAST({quote(c)} AS DOUBLE) * {w!r}" for c, w in m.label.columns.items())
        time_kind = self._kind(m.request.time)
        items = [
            (quote(m.request.id), "rkey"),
            (epoch_us(m.request.time, time_kind, m.request.time_unit, m.partitions.time_zone), "ts_us"),
            (f"CAST(CASE CAST({quote(m.funnel.column)} AS VARCHAR) {stage_cases} END AS TINYINT)", "stage"),
            (f"({label})", "label"),
            (quote(FILE_COLUMN), quote(FILE_COLUMN)),
        ]
        for prefix, specs in (("u", m.user), ("c", m.context), ("i", m.item)):
            for f in specs:
                if f.column is not None:
                    value = f"CAST({quote(f.column)} AS DOUBLE)" if f.type == "numeric" else quote(f.column)
                    items.append((value, f"{prefix}_{f.name}"))
        if m.history is not None and m.history.lists is not None:
            key_type = self.types[m.item[0].column or ""]
            for name, col in m.history.lists.items():
                value = quote(col) if self._kind(col) == "list" else f"CAST({quote(col)} AS {key_type}[])"
                items.append((value, f"h_{name}"))
        return items

    def _reasons(self) -> list[tuple[str, str, str]]:
        """(reason, long-table column, SQL condition on the normalised row), in the order they are checked."""
        m = self.m
        key = f"i_{m.item[0].name}"
        out = [
            ("null request id", m.request.id, "rkey IS NULL"),
            ("null or unparsable time", m.request.time, "ts_us IS NULL"),
            ("null item id", m.item[0].column or "", f"{key} IS NULL"),
            ("unknown stage", m.funnel.column, "stage IS NULL"),
        ]
        for c in m.label.columns:
            out.append((f"null or non-finite {c!r}", c, f"NOT coalesce(isfinite(fb_{len(out) - 4}), false)"))
        return out

    def _load_rows(self) -> int:
        """Normalise every row into ``rows`` with its check result ``reason`` (one scan of the source), then
        raise on (or drop and count) the bad rows; returns the rows read."""
        m = self.m
        reasons = self._reasons()
        reason_case = "CASE " + " ".join(f"WHEN {cond} THEN {i}" for i, (_, _, cond) in enumerate(reasons)) + " END"
        select = self._select_list()
        raw = [f"CAST({quote(c)} AS VARCHAR) AS raw_{i}" for i, (_, c, _) in enumerate(reasons)]
        raw += [f"CAST({quote(c)} AS DOUBLE) AS fb_{i}" for i, c in enumerate(m.label.columns)]
        norm = f"SELECT {', '.join([f'{e} AS {a}' for e, a in select] + raw)} FROM {self.source.reader()}"
        self.con.sql(f"CREATE TEMP VIEW checked AS SELECT *, {reason_case} AS reason FROM ({norm})")
        part = f"date_trunc({sql_string(m.partitions.unit)}, {local_time('ts_us', m.partitions.time_zone)})"
        keep = ", ".join(a for _, a in select)
        self.con.sql(f"CREATE TABLE rows AS SELECT {keep}, {part} AS part, reason FROM checked ORDER BY part")
        found = self.con.execute(
            "SELECT reason, count(*) FROM rows WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason"
        ).fetchall()
        for code, count in found:
            name, column, _ = reasons[code]
            if self.on_error == "raise":
                raise TableFormatError(self._row_message(name, column, code, count))
            self.dropped[name] = self.dropped.get(name, 0) + int(count)
        if found:
            self.con.sql("DELETE FROM rows WHERE reason IS NOT NULL")
        total = fetch_one(self.con, "SELECT count(*) FROM rows")
        return int(total[0] if total else 0) + sum(int(c) for _, c in found)

    def _row_message(self, name: str, column: str, code: int, count: int) -> str:
        """The message of check ``code``, with an example row read again from the source (``checked``)."""
        m = self.m
        example = ", ".join([f"f := {quote(FILE_COLUMN)}", "r := CAST(rkey AS VARCHAR)",
                             f"i := CAST(i_{m.item[0].name} AS VARCHAR)", f"v := raw_{code}"])  # fmt: skip
        found = fetch_one(self.con, f"SELECT struct_pack({example}) FROM checked WHERE reason = {code} LIMIT 1")
        row = found[0] if found else {"f": str(self.source.root), "r": None, "i": None, "v": None}
        value = row["v"]
        what = {
            "null request id": "null request id",
            "null or unparsable time": f"null or unparsable time {value!r}" if value is not None else "null time",
            "null item id": "null item id",
            "unknown stage": f"value {value!r} is not among funnel.stages {m.funnel.stages}",
        }.get(name, f"label value {value or 'NULL'} is null or not finite")
        example = f"{m.request.id}={row['r'] or 'NULL'}, {m.item[0].column}={row['i'] or 'NULL'}"
        return f"{row['f']}: column {column!r}: {what} (e.g. row {example}; {count} such row(s); {_DROP_HINT})"

    def _example_file(self, cond: str, params: list) -> str:
        """The source file of a row of ``rows`` matching ``cond`` (``$1``, ``$2`` = ``params``)."""
        found = fetch_one(self.con, f"SELECT {quote(FILE_COLUMN)} FROM rows WHERE {cond} LIMIT 1", params)
        return str(found[0]) if found else str(self.source.root)

    def _check_spread(self) -> None:
        """A request must lie in one partition."""
        spread = "SELECT rkey, min(part) AS a, max(part) AS b, count(*) AS n FROM rows GROUP BY rkey HAVING a <> b"
        found = fetch_one(
            self.con, f"SELECT count(*), sum(n), any_value(struct_pack(r := rkey, a := a, b := b)) FROM ({spread})"
        )
        count, rows, ex = found or (0, 0, None)
        if not count:
            return
        if self.on_error == "drop":
            self.con.sql(f"DELETE FROM rows WHERE rkey IN (SELECT rkey FROM ({spread}))")
            self.dropped["request in two partitions"] = int(rows)
            return
        name = _NAME_FORMAT[self.m.partitions.unit]
        a, b = ex["a"].strftime(name), ex["b"].strftime(name)
        where = self._example_file("rkey = $1 AND part = $2", [ex["r"], ex["b"]])
        raise TableFormatError(
            f"{where}: column {self.m.request.time!r}: request {ex['r']} has rows in partitions {a} and {b}, "
            f"a request must lie in one (e.g. row {self.m.request.id}={ex['r']}; "
            f"{count} such request(s); {_DROP_HINT})"
        )

    def _check_duplicates(self) -> None:
        """One row per (request, item)."""
        key = f"i_{self.m.item[0].name}"
        dups = f"SELECT rkey, {key}, count(*) AS n FROM rows GROUP BY rkey, {key} HAVING n > 1"
        found = fetch_one(self.con, f"SELECT count(*), sum(n - 1), any_value(struct_pack(r := rkey, i := {key}, "
                          f"n := n)) FROM ({dups})")  # fmt: skip
        count, extra, ex = found or (0, 0, None)
        if not count:
            return
        if self.on_error == "drop":
            self.con.sql(
                f"DELETE FROM rows WHERE rowid IN (SELECT id FROM (SELECT rows.rowid AS id, row_number() OVER "
                f"(PARTITION BY rkey, {key} ORDER BY stage DESC, label DESC) AS rn FROM rows SEMI JOIN ({dups}) "
                f"USING (rkey, {key})) WHERE rn > 1)"
            )
            self.dropped["duplicate (request, item)"] = int(extra)
            return
        m = self.m
        where = self._example_file(f"rkey = $1 AND {key} = $2", [ex["r"], ex["i"]])
        raise TableFormatError(
            f"{where}: columns {m.request.id!r}, {m.item[0].column!r}: duplicate (request, item) rows "
            f"(e.g. row {m.request.id}={ex['r']}, {m.item[0].column}={ex['i']} appears "
            f"{ex['n']} times; {count} such pair(s); --on-error drop keeps the row at the deepest stage)"
        )

    # -- 4: requests, partitions, encodings -----------------------------------------------------
    def _make_requests(self) -> None:
        m = self.m
        cols = [f"any_value({p}_{f.name}) AS {p}_{f.name}" for p, specs in (("u", m.user), ("c", m.context))
                for f in specs if f.column is not None]  # fmt: skip
        if m.history is not None and m.history.lists is not None:
            cols += [f"any_value(h_{name}) AS h_{name}" for name in m.history.lists]
        grouped = (
            f"SELECT rkey, min(ts_us) AS ts_us, any_value(part) AS part, {', '.join(cols)} FROM rows GROUP BY rkey"
        )
        rid = (
            "CAST(rkey AS BIGINT)"
            if self._kind(m.request.id) == "integer"
            else "row_number() OVER (ORDER BY ts_us, rkey) - 1"
        )
        self.con.sql(
            f"CREATE TABLE req AS SELECT *, row_number() OVER (PARTITION BY part ORDER BY ts_us, rkey) - 1 AS ridx, "
            f"{rid} AS rid FROM ({grouped}) ORDER BY part, ridx"
        )

    def _check_history_lists(self) -> None:
        """The history list columns of a request have the same length (slot j of each describes one event)."""
        h = self.m.history
        if h is None or h.lists is None or len(h.lists) < 2:
            return
        (first, first_col), *others = h.lists.items()
        for name, col in others:
            found = fetch_one(
                self.con, f"SELECT rkey, len(h_{first}), len(h_{name}) FROM req WHERE len(h_{first}) <> len(h_{name})"
            )
            if found is not None:
                where = self._example_file("rkey = $1", [found[0]])
                raise TableFormatError(
                    f"{where}: columns {first_col!r}, {col!r}: history lists of different lengths ({found[1]} and "
                    f"{found[2]}; e.g. row {self.m.request.id}={found[0]})"
                )

    def _partitions(self) -> list[tuple[datetime, int, PartitionRole]]:
        """(start, requests, role) of each non-empty partition in time order; registers table ``roles``."""
        found = self.con.execute("SELECT part, count(*) FROM req GROUP BY part ORDER BY part").fetchall()
        roles = _roles([p for p, _ in found], self.m)
        if "train" not in roles:
            raise TableFormatError(
                f"{self.source.root}: no train partition among {len(found)} partition(s) "
                f"({_NAME_FORMAT[self.m.partitions.unit]} names); check partitions.valid_from/test_from or valid/test"
            )
        self.con.sql("CREATE TABLE roles (part TIMESTAMP, role VARCHAR)")
        self.con.executemany("INSERT INTO roles VALUES (?, ?)", [[p, r] for (p, _), r in zip(found, roles)])
        return [(p, int(n), r) for (p, n), r in zip(found, roles)]

    def _fit_scope(self) -> str:
        if self.m.vocabulary.fit_on == "all":
            return "TRUE"
        return "part IN (SELECT part FROM roles WHERE role = 'train')"

    def _fit_encodings(self) -> None:
        m, v = self.m, self.m.vocabulary
        for prefix, table, specs in (("u", "req", m.user), ("c", "req", m.context), ("i", "rows", m.item)):
            for f in specs:
                if f.derive is not None:
                    self.encodings[f.name] = _Encoding(DERIVED_VOCAB[f.derive])
                elif f.type == "numeric":
                    self.encodings[f.name] = self._fit_bins(f, f"{prefix}_{f.name}", table)
                else:
                    name = f"v_{prefix}_{f.name}"
                    values = self._values_sql(prefix, f.name, table)
                    self.con.sql(
                        f"CREATE TABLE {name} AS SELECT value, CAST(row_number() OVER (ORDER BY value) + {v.oov_id} "
                        f"AS BIGINT) AS id FROM ({values}) WHERE value IS NOT NULL AND {self._fit_scope()} "
                        f"GROUP BY value HAVING count(*) >= {v.min_count}"
                    )
                    n = fetch_one(self.con, f"SELECT count(*) FROM {name}")
                    self.encodings[f.name] = _Encoding(max(int(n[0] if n else 0) + v.oov_id + 1, 2), table=name)

    def _values_sql(self, prefix: str, name: str, table: str) -> str:
        """SQL of (value, part) of a field's occurrences: its column, and for an item field with a history list
        column, the list elements too (so an item seen only in histories is in the vocabulary)."""
        sql = f"SELECT {prefix}_{name} AS value, part FROM {table}"
        h = self.m.history
        if prefix == "i" and h is not None and h.lists is not None and name in h.lists:
            sql += f" UNION ALL SELECT unnest(h_{name}) AS value, part FROM req"
        return sql

    def _fit_bins(self, f: FeatureSpec, column: str, table: str) -> _Encoding:
        qs = [k / f.bins for k in range(1, f.bins)]
        scope = "part IN (SELECT part FROM roles WHERE role = 'train')"
        sql = f"SELECT quantile_cont({column}, {qs}) FROM {table} WHERE isfinite({column}) AND {scope}"
        row = fetch_one(self.con, sql)
        edges = sorted({float(e) for e in (row[0] if row and row[0] else [])})
        return _Encoding(len(edges) + 2, edges=edges)

    def encoded(self, prefix: str, f: FeatureSpec, alias: str) -> tuple[str, str]:
        """(SQL id expression of field ``f`` of table ``alias``, the join it needs or "")."""
        enc = self.encodings[f.name]
        col = f"{alias}.{prefix}_{f.name}"
        if f.derive is not None:
            return _DERIVE_SQL[f.derive].format(t=local_time(f"{alias}.ts_us", self.m.partitions.time_zone)), ""
        if enc.edges is not None:
            steps = "".join(f" + CAST({col} >= {e!r} AS BIGINT)" for e in enc.edges)
            return f"CASE WHEN {col} IS NULL OR NOT isfinite({col}) THEN 0 ELSE 1{steps} END", ""
        j = f"j_{prefix}_{f.name}"
        oov = self.m.vocabulary.oov_id
        join = f" LEFT JOIN {enc.table} {j} ON {col} = {j}.value"
        return f"CASE WHEN {col} IS NULL THEN 0 ELSE coalesce({j}.id, {oov}) END", join

    # -- 5: one partition ---------------------------------------------------------------------
    def _write_partition(
        self, tmp: Path, schema: DatasetSchema, part: tuple[datetime, int, PartitionRole]
    ) -> Partition:
        start, num, role = part
        lit = f"TIMESTAMP {sql_string(start.isoformat(sep=' '))}"
        arrays = self._request_arrays(lit, num)
        arrays.update(self._candidate_arrays(lit, num))
        p = _partition(start, self.m.partitions.unit, role, num)
        seed = [self.m.candidates.seed, zlib.crc32(p.name.encode())]
        shuffle_candidates(arrays, self.m.candidates.num_candidates, np.random.default_rng(seed))
        if self.m.history is not None:
            arrays.update(history_arrays(self, lit, num))
        write_partition(tmp, schema, p, arrays)
        logger.info("%s: %d requests (%s)", p.name, num, role)
        return p

    def _request_arrays(self, lit: str, num: int) -> dict[str, np.ndarray]:
        m = self.m
        exprs, joins = ["q.ridx", "q.rid"], ""
        for prefix, role, specs in (("u", "user", m.user), ("c", "context", m.context)):
            for f in specs:
                e, j = self.encoded(prefix, f, "q")
                exprs.append(f"{e} AS {quote(f'{role}.{f.name}')}")
                joins += j
        sql = f"SELECT {', '.join(exprs)} FROM req q{joins} WHERE q.part = {lit} ORDER BY q.ridx"
        data = self.con.execute(sql).fetchnumpy()
        assert len(data["ridx"]) == num and (data["ridx"] == np.arange(num)).all()
        arrays = {"request_id": np.asarray(data["rid"], dtype=np.int64)}
        arrays.update({k: np.asarray(v, dtype=np.int64) for k, v in data.items() if k not in ("ridx", "rid")})
        return arrays

    def _kept_sql(self, lit: str) -> str:
        """SQL of a partition's kept candidate rows with ``ridx`` and their ``slot`` (kept rows first, deepest
        stage first; :meth:`_write_partition` shuffles the slots)."""
        c = self.m.candidates
        key = f"i_{self.m.item[0].name}"
        rows = (
            f"SELECT q.ridx, w.*, hash(w.rkey, w.{key}, {c.seed}) AS k FROM rows w JOIN req q ON w.rkey = q.rkey "
            f"WHERE w.part = {lit} AND q.part = {lit}"
        )
        if c.per_stage is None:
            rank = "row_number() OVER (PARTITION BY ridx ORDER BY stage DESC, k)"
            return f"SELECT *, {rank} - 1 AS slot FROM ({rows}) QUALIFY slot < {c.num}"
        stages, offset, counts, offsets = self.m.funnel.stages, 0, [], []
        for s in sorted(c.per_stage, key=stages.index, reverse=True):  # deepest stage first
            counts.append(f"WHEN {stages.index(s)} THEN {c.per_stage[s]}")
            offsets.append(f"WHEN {stages.index(s)} THEN {offset}")
            offset += c.per_stage[s]
        rank = "row_number() OVER (PARTITION BY ridx, stage ORDER BY k)"
        return (
            f"SELECT *, {rank} AS rn, CASE stage {' '.join(offsets)} END + rn - 1 AS slot FROM ({rows}) "
            f"QUALIFY rn <= CASE stage {' '.join(counts)} ELSE 0 END"
        )

    def _candidate_arrays(self, lit: str, num: int) -> dict[str, np.ndarray]:
        """The ``[num, N]`` candidate columns, kept rows in the first slots (deepest stage first)."""
        m, n = self.m, self.m.candidates.num_candidates
        exprs, joins = ["w.ridx", "w.slot"], ""
        for f in m.item:
            e, j = self.encoded("i", f, "w")
            exprs.append(f"{e} AS {quote(f'item.{f.name}')}")
            joins += j
        exprs += ["w.stage AS stage", "CAST(w.label AS FLOAT) AS label"]
        sql = f"SELECT {', '.join(exprs)} FROM ({self._kept_sql(lit)}) w{joins}"
        names = [f"item.{f.name}" for f in m.item]
        arrays = {k: np.zeros((num, n), np.int64) for k in names}
        arrays.update(
            mask=np.zeros((num, n), bool), stage=np.zeros((num, n), np.int8), label=np.zeros((num, n), np.float32)
        )
        for batch in self.con.sql(sql).to_arrow_reader(1 << 20):
            r, s = batch.column("ridx").to_numpy(), batch.column("slot").to_numpy()
            arrays["mask"][r, s] = True
            for k in (*names, "stage", "label"):
                arrays[k][r, s] = batch.column(k).to_numpy()
        return arrays

    # -- outputs ------------------------------------------------------------------------------
    def _write_vocabularies(self, tmp: Path) -> None:
        (tmp / "vocabulary").mkdir()
        for role, specs in (("user", self.m.user), ("context", self.m.context), ("item", self.m.item)):
            for f in specs:
                enc = self.encodings[f.name]
                if enc.table is not None:
                    path = sql_string(str(tmp / "vocabulary" / f"{role}.{f.name}.parquet"))
                    self.con.sql(f"COPY (SELECT value, id FROM {enc.table} ORDER BY id) TO {path} (FORMAT parquet)")

    def _schema(self, partitions: list[Partition]) -> DatasetSchema:
        m = self.m
        roles: tuple[tuple[Role, list[FeatureSpec]], ...] = (("user", m.user), ("context", m.context), ("item", m.item))
        features = [
            CategoricalField(
                name=f.name, role=role, vocab_size=self.encodings[f.name].vocab_size, description=_describe(f)
            )
            for role, specs in roles
            for f in specs
        ]
        history = [HistoryField(name=h, item_field=h) for h in (m.history.fields if m.history else [])]
        return DatasetSchema(
            name=m.name,
            features=features,
            history=history,
            history_length=m.history.length if m.history else 0,
            num_candidates=m.candidates.num_candidates,
            funnel_positions=list(m.funnel.stages),
            keep=list(m.cascade.keep),
            gt_num=m.cascade.gt_num,
            partitions=partitions,
            train_defaults=TrainDefaults(batch_size=m.batch_size, passes=m.passes),
            provenance={
                "construction": f"cascade-ranking prepare table (converter v{CONVERTER_VERSION})",
                "source": str(self.source.root),
                "mapping": m.model_dump(mode="json"),
                "numeric_cut_points": {k: e.edges for k, e in self.encodings.items() if e.edges is not None},
                "vocabulary_files": "vocabulary/<role>.<field>.parquet (value, id)",
                "dropped": dict(self.dropped),
            },
        )


def _describe(f: FeatureSpec) -> str:
    if f.derive is not None:
        return f"{f.derive} of the request time (derived)"
    if f.type == "numeric":
        return f"{f.column}: {f.bins} equal-frequency buckets fitted on train (cut points in provenance)"
    return f"{f.column}: vocabulary in ascending value order"


def _partition(start: datetime, unit: str, role: PartitionRole, num: int) -> Partition:
    """The :class:`Partition` of the ``unit`` starting at local time ``start``."""
    days = {"hour": 0, "day": 0, "week": 6}[unit]
    end = np.datetime64(start.date()) + np.timedelta64(days, "D")
    return Partition(name=start.strftime(_NAME_FORMAT[unit]), role=role, num_requests=num,
                     start=start.date().isoformat(), end=str(end))  # fmt: skip


def _roles(starts: list[datetime], mapping: TableMapping) -> list[PartitionRole]:
    """Roles of partitions starting at ``starts`` (time order) by the mapping's ``partitions`` rule."""
    p = mapping.partitions
    if p.test is not None or p.valid is not None:
        test, valid = p.test or 0, p.valid or 0
        if test + valid > len(starts):
            raise TableFormatError(f"partitions: test={test} + valid={valid} exceed the {len(starts)} partition(s)")
        return roles_in_time_order(len(starts) - test - valid, valid, test)
    bounds = {k: datetime.fromisoformat(t) if t else None for k, t in (("valid", p.valid_from), ("test", p.test_from))}
    out: list[PartitionRole] = []
    for s in starts:
        role: PartitionRole = "train"
        if bounds["test"] is not None and s >= bounds["test"]:
            role = "test"
        elif bounds["valid"] is not None and s >= bounds["valid"]:
            role = "valid"
        out.append(role)
    return out

"""Behaviour histories for :mod:`.table`: list columns of the long table, or a separate events table.

Both give ``[B, L]`` int64 ids per history field (0 = padding), each field encoded with the vocabulary of the
item field of the same name.

* **lists** (``history.lists``): one list per request (taken from one of its rows). ``recent_first``: element
  ``j`` (0-based) goes to slot ``j``, elements past L are dropped, padding at the end. ``oldest_first``: the
  last element goes to slot L-1, the one before to L-2, ..., elements before the last L dropped, padding
  at the start. A null element is a padded slot.
* **events** (``history.events``): a table of (user, time, item fields) rows. A request's history is its
  user's last L events strictly before the request time, most recent first (slot 0), padding at the end;
  events of one user at the same time are ordered by the candidate key. Found with an as-of join (the number
  ``k`` of the user's events before the request) and a range join on the user's event numbers
  ``k - L < n <= k``: work and output are O(requests x L), whatever the users' event counts.
  Events with a null user, time or item, or naming an item that is no candidate's item anywhere in the long
  table, raise :class:`.TableFormatError` (or are dropped and counted with ``--on-error drop``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .table_mapping import TableMapping
from .table_source import (
    FILE_COLUMN,
    TableFormatError,
    check_columns,
    column_kind,
    epoch_us,
    fetch_one,
    list_sources,
    quote,
)

__all__ = ["history_arrays", "load_events"]


def load_events(con, mapping: TableMapping, on_error: str, long_types: dict[str, str]) -> dict[str, int]:
    """Read and check the events table into DuckDB table ``events`` (columns ``eu``, ``ts_us``, ``i_<field>``,
    ``n`` = the event's 1-based number in its user's time order). Returns rows dropped by reason.
    ``long_types`` are the long table's column types (the user and item columns must be of the same kind).

    Raises:
        TableFormatError: a missing or mistyped column; a null user, time or item; an unknown item.
    """
    assert mapping.history is not None and mapping.history.events is not None
    ev = mapping.history.events
    source = list_sources(ev.path, "history.events.path")
    wanted = {ev.user: "id", ev.time: "time", **dict.fromkeys(ev.fields.values(), "categorical")}
    describe = {ev.user: "history.events.user", ev.time: "history.events.time"}
    describe.update({c: f"history.events.fields.{k}" for k, c in ev.fields.items()})
    check_columns(source.column_types(con), wanted, describe)
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {source.reader()}").fetchall()}
    _same_kinds(source.files[0], types, long_types, mapping)
    ts = epoch_us(ev.time, column_kind(types[ev.time]), ev.time_unit, mapping.partitions.time_zone)
    fields = ", ".join(f"{quote(c)} AS i_{k}" for k, c in ev.fields.items())
    con.sql(
        f"CREATE TABLE events_raw AS SELECT {quote(ev.user)} AS eu, {ts} AS ts_us, {fields}, {quote(FILE_COLUMN)} "
        f"FROM {source.reader()}"
    )
    key = f"i_{mapping.item[0].name}"
    dropped: dict[str, int] = {}
    checks = (
        (
            "events: null user, time or item",
            "eu IS NULL OR ts_us IS NULL OR " + f"{key} IS NULL",
            "null user, time or item",
        ),
        ("events: unknown item", f"{key} NOT IN (SELECT DISTINCT {key} FROM rows)", "unknown item"),
    )
    for reason, cond, what in checks:
        found = fetch_one(
            con,
            f"SELECT count(*), any_value(struct_pack(f := {quote(FILE_COLUMN)}, u := CAST(eu AS VARCHAR), "
            f"i := CAST({key} AS VARCHAR))) FROM events_raw WHERE {cond}",
        )
        count, ex = found if found else (0, None)
        if not count:
            continue
        if on_error == "drop":
            con.sql(f"DELETE FROM events_raw WHERE {cond}")
            dropped[reason] = int(count)
            continue
        item_col = ev.fields[mapping.item[0].name]
        detail = (
            f"item {ex['i']} is not among the long table's candidate items"
            if what == "unknown item"
            else "null user, time or item"
        )
        column = item_col if what == "unknown item" else f"{ev.user}/{ev.time}/{item_col}"
        raise TableFormatError(
            f"{ex['f']}: column {column!r}: {detail} (e.g. row {ev.user}={ex['u'] or 'NULL'}, "
            f"{item_col}={ex['i'] or 'NULL'}; {count} such row(s); --on-error drop drops them)"
        )
    con.sql(
        f"CREATE TABLE events AS SELECT *, row_number() OVER (PARTITION BY eu ORDER BY ts_us, {key}) AS n "
        "FROM events_raw ORDER BY eu, n"
    )
    con.sql("DROP TABLE events_raw")
    return dropped


def _same_kinds(file, types: dict[str, str], long_types: dict[str, str], mapping: TableMapping) -> None:
    """The events' user and item columns hold the same kind of values as the long table's."""
    assert mapping.history is not None and mapping.history.events is not None
    ev = mapping.history.events
    pairs = [(ev.user, mapping.request_user.column), (ev.fields[mapping.item[0].name], mapping.item[0].column)]
    for events_col, long_col in pairs:
        if long_col is None:
            continue
        a, b = column_kind(types[events_col]), column_kind(long_types[long_col])
        if a != b:
            raise TableFormatError(
                f"{file}: column {events_col!r} has type {types[events_col]}, but the long table's {long_col!r} "
                f"has {long_types[long_col]} (history.events must use the same ids)"
            )


def _scatter(con, sql: str, names: list[str], num: int, length: int) -> dict[str, np.ndarray]:
    """Run ``sql`` (columns ``ridx``, ``slot``, ``names``) and scatter it into ``[num, length]`` arrays."""
    arrays = {k: np.zeros((num, length), np.int64) for k in names}
    for batch in con.sql(sql).to_arrow_reader(1 << 20):
        r, s = batch.column("ridx").to_numpy(), batch.column("slot").to_numpy()
        for k in names:
            arrays[k][r, s] = batch.column(k).to_numpy()
    return arrays


def _list_sql(conv: Any, name: str, lit: str) -> str:
    m = conv.m
    length = m.history.length
    f = next(f for f in m.item if f.name == name)
    expr, join = conv.encoded("i", f, "u")
    unnest = (
        f"SELECT ridx, unnest(h_{name}) AS i_{name}, unnest(range(1, len(h_{name}) + 1)) AS pos, "
        f"len(h_{name}) AS n FROM req WHERE part = {lit}"
    )
    if m.history.order == "recent_first":
        slot, keep = "u.pos - 1", f"u.pos <= {length}"
    else:
        slot, keep = f"{length} - u.n + u.pos - 1", f"u.n - u.pos < {length}"
    return f"SELECT u.ridx, {slot} AS slot, {expr} AS {quote('history.' + name)} FROM ({unnest}) u{join} WHERE {keep}"


def _events_sql(conv: Any, lit: str) -> str:
    m = conv.m
    length = m.history.length
    user = f"u_{m.request_user.name}"
    exprs, joins = [], ""
    for name in m.history.fields:
        f = next(f for f in m.item if f.name == name)
        expr, join = conv.encoded("i", f, "h")
        exprs.append(f"{expr} AS {quote('history.' + name)}")
        joins += join
    k = (
        f"SELECT q.ridx, q.{user} AS eu, e.n AS k FROM (SELECT ridx, {user}, ts_us FROM req WHERE part = {lit}) q "
        f"ASOF JOIN events e ON q.{user} = e.eu AND q.ts_us > e.ts_us"
    )
    return (
        f"SELECT k.ridx, k.k - h.n AS slot, {', '.join(exprs)} FROM ({k}) k JOIN events h ON h.eu = k.eu "
        f"AND h.n <= k.k AND h.n > k.k - {length}{joins}"
    )


def history_arrays(conv: Any, lit: str, num: int) -> dict[str, np.ndarray]:
    """The ``history.<field>`` ``[num, L]`` arrays of the requests of the partition starting at SQL literal ``lit``
    (``conv`` is the running conversion of :mod:`.table`: its connection, mapping and encodings)."""
    m = conv.m
    length = m.history.length
    if m.history.lists is not None:
        out: dict[str, np.ndarray] = {}
        for name in m.history.lists:
            out.update(_scatter(conv.con, _list_sql(conv, name, lit), [f"history.{name}"], num, length))
        return out
    names = [f"history.{n}" for n in m.history.fields]
    return _scatter(conv.con, _events_sql(conv, lit), names, num, length)

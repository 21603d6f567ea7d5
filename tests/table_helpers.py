"""Test helpers for ``prepare table``: flatten a store dataset into a long table, and read a converted dataset
back in source values (through its vocabulary files), so two datasets can be compared request by request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade_ranking.data.store import open_dataset, read_partition


def _history_lists(values: np.ndarray, valid: np.ndarray, rows: np.ndarray) -> pa.Array:
    """``[B, L]`` history values -> one list per long-table row (the valid slots in slot order), for ``rows``."""
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid]))
    return lists.take(pa.array(rows))


def flatten_dataset(directory: Path, out: Path, times: dict[str, np.ndarray | int]) -> None:
    """Write every partition of a store dataset as a long table ``out/part=<name>/rows.parquet``: one row per
    valid candidate slot with ``request_id``, ``ts`` (``times[partition]``: seconds, per request or one value),
    ``user_<f>``, ``context_<f>``, ``item_<f>``, ``stage`` (the funnel-position name), ``label`` and
    ``hist_<f>`` list columns (the valid slots: where the first history field is non-zero)."""
    schema = open_dataset(directory)
    names = np.asarray(schema.funnel_positions, dtype=object)
    for part in schema.partitions:
        if not part.num_requests:
            continue
        a = read_partition(directory, schema, part)
        req, slot = np.nonzero(a["mask"])
        cols: dict[str, pa.Array | np.ndarray] = {
            "request_id": a["request_id"][req],
            "ts": np.broadcast_to(np.asarray(times[part.name], dtype=np.int64), a["request_id"].shape)[req],
        }
        for f in schema.features:
            key = f"{f.role}.{f.name}"
            cols[f"{f.role}_{f.name}"] = a[key][req, slot] if f.role == "item" else a[key][req]
        cols["stage"] = pa.array(names[a["stage"][req, slot]], pa.string())
        cols["label"] = a["label"][req, slot]
        if schema.history:
            valid = a[f"history.{schema.history[0].name}"] != 0
            for h in schema.history:
                cols[f"hist_{h.name}"] = _history_lists(a[f"history.{h.name}"], valid, req)
        path = out / f"part={part.name}" / "rows.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)


def decoders(directory: Path) -> dict[str, np.ndarray]:
    """``"<role>.<field>"`` -> array mapping a converted id to its source value (0 -> 0), from ``vocabulary/``."""
    schema = open_dataset(directory)
    out = {}
    for f in schema.features:
        path = directory / "vocabulary" / f"{f.role}.{f.name}.parquet"
        if path.is_file():
            t = pq.read_table(path)
            dec = np.full(f.vocab_size, -1, dtype=np.int64)
            dec[t.column("id").to_numpy()] = t.column("value").to_numpy()
            dec[0] = 0
            out[f"{f.role}.{f.name}"] = dec
    return out


def requests_by_id(directory: Path, decode: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """Per non-empty partition: its role and its requests sorted by id as comparable numpy arrays: scalar
    columns, history columns and the candidates as a lexicographically sorted ``[C, k]`` table of
    (request id, item fields..., stage, label); ids decoded with ``decode`` where given."""
    schema = open_dataset(directory)
    decode = decode or {}
    out = {}
    for part in schema.partitions:
        if not part.num_requests:
            continue
        a = read_partition(directory, schema, part)
        order = np.argsort(a["request_id"])
        cols = {k: (decode[k][v] if k in decode else v)[order] for k, v in a.items() if a[k].ndim == 1}
        for h in schema.history:
            v = a[f"history.{h.name}"]
            cols[f"history.{h.name}"] = (decode[f"item.{h.item_field}"][v] if f"item.{h.item_field}" in decode else v)[
                order
            ]
        req, slot = np.nonzero(a["mask"])
        items = [f"item.{f.name}" for f in schema.features if f.role == "item"]
        table = [a["request_id"][req].astype(np.float64)]
        table += [(decode[k][a[k]] if k in decode else a[k])[req, slot].astype(np.float64) for k in items]
        table += [a["stage"][req, slot].astype(np.float64), a["label"][req, slot].astype(np.float64)]
        cand = np.stack(table, axis=1)
        cols["candidates"] = cand[np.lexsort(cand.T[::-1])]
        out[part.name] = {"role": part.role, **cols}
    return out


def assert_same_requests(original: Path, converted: Path, *, skip: tuple[str, ...] = ()) -> None:
    """The converted dataset holds the same partitions (non-empty ones, same roles), requests, user and context
    values, candidates (items, funnel positions, labels) and histories as ``original``."""
    want = requests_by_id(original)
    got = requests_by_id(converted, decoders(converted))
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.keys() == w.keys(), name
        for key in w:
            if key in skip:
                continue
            if key == "role":
                assert g[key] == w[key], name
            else:
                np.testing.assert_array_equal(g[key], w[key], err_msg=f"partition {name}, {key}")

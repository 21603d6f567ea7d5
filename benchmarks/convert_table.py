"""Benchmark: ``prepare table`` on a large synthetic long table — throughput (rows/s) and peak memory.

Generates, day by day (bounded memory), a long table on disk: Parquet files in hive folders
``long/dt=<day>/part.parquet``, one row per (request, candidate), ``--candidates`` rows per request (5 shown,
then ranked, preranked, retrieved in the ratio 5 : 10 : 15 : 20), users and items drawn uniformly, a click
and like on shown items; plus an events table (``events.parquet``: user, time, item; ``--events`` rows over
the week before and the days of the log). Then converts it with ``cascade-ranking prepare table`` in a child
process (DuckDB on ``--threads`` threads under ``--memory-limit``), N = 40 candidates (the 50 rows of a
request truncated, deepest stages first), a 20-event history, daily partitions (the last one test), and
reports the conversion's wall time, rows/s and the child's peak RSS (``ru_maxrss`` of the child, which
includes DuckDB's buffers, Python and Arrow). The generator runs in this process, so it is not counted.

Usage (the 20M-row figure in the README)::

    python benchmarks/convert_table.py --rows 20000000 --threads 2 --out docs/results/convert-table

Develop with ``--rows 1000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = 1_704_067_200  # 2024-01-01 00:00 UTC
DAY = 86_400
STAGES = ("retrieved", "preranked", "ranked", "shown")
MAPPING = """\
name: synthetic-long-table
request: {{id: request_id, time: ts}}
user:
  - {{name: user_id, column: user_id}}
  - {{name: age, column: age, type: numeric, bins: 8}}
context:
  - {{name: weekday, derive: weekday}}
  - {{name: hour, derive: hour}}
  - {{name: device, column: device}}
item:
  - {{name: item_id, column: item_id}}
  - {{name: category, column: category}}
  - {{name: price, column: price, type: numeric, bins: 16}}
funnel: {{column: stage, stages: [retrieved, preranked, ranked, shown]}}
label: {{sum: {{click: 1.0, like: 2.0}}}}
history:
  length: 20
  events: {{path: {events}, user: user_id, time: ts, fields: {{item_id: item_id}}}}
candidates: {{num: 40, seed: 0}}
partitions: {{unit: day, time_zone: UTC, test: 1}}
vocabulary: {{min_count: 2, oov_id: 1, fit_on: train}}
cascade: {{keep: [30, 20], gt_num: 5}}
"""


def _day_table(rng: np.random.Generator, day: int, first_request: int, requests: int, cands: int, sizes) -> pa.Table:
    """One day's long table (vectorised)."""
    users, items = sizes
    rid = np.repeat(np.arange(first_request, first_request + requests, dtype=np.int64), cands)
    ts = np.repeat(START + day * DAY + np.sort(rng.integers(0, DAY, requests)), cands)
    user = np.repeat(rng.integers(0, users, requests), cands)
    share = np.array([20, 15, 10, 5]) * cands // 50
    share[0] += cands - share.sum()
    stage = np.tile(np.repeat(np.arange(4, dtype=np.int8), share), requests)
    # distinct items within a request: a random start and a prime stride (7919 is coprime to ``items``)
    item = (np.repeat(rng.integers(0, items, requests), cands) + np.tile(np.arange(cands) * 7919, requests)) % items
    click = (stage == 3) & (rng.random(len(rid)) < 0.3)
    like = click & (rng.random(len(rid)) < 0.2)
    return pa.table({
        "request_id": rid, "ts": ts, "user_id": user, "age": 16 + user % 60,
        "device": pa.DictionaryArray.from_arrays(pa.array(user % 3, pa.int8()), pa.array(["ios", "android", "web"])),
        "item_id": item, "category": item % 500, "price": np.round(1 + (item % 997) * 0.37, 2),
        "stage": pa.DictionaryArray.from_arrays(pa.array(stage), pa.array(STAGES)),
        "click": click.astype(np.int8), "like": like.astype(np.int8),
    })  # fmt: skip


def generate(root: Path, rows: int, days: int, cands: int, events: int, seed: int) -> tuple[int, float]:
    """Write the long table and the events table under ``root``; returns (rows written, seconds)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    requests = rows // cands
    users, items = max(requests // 4, 10), max(rows // 100, 100) | 1
    per_day = np.diff(np.linspace(0, requests, days + 1).astype(np.int64))
    first = 0
    for day, n in enumerate(per_day):
        path = root / "long" / f"dt={np.datetime64(START + day * DAY, 's').astype('M8[D]')}" / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_day_table(rng, day, first, int(n), cands, (users, items)), path, row_group_size=1 << 20)
        first += int(n)
    ev_items = rng.integers(0, items, events)
    ev = pa.table({
        "user_id": rng.integers(0, users, events),
        "ts": rng.integers(START - 7 * DAY, START + days * DAY, events),
        "item_id": ev_items,
    })  # fmt: skip
    pq.write_table(ev, root / "events.parquet")
    return first * cands, time.perf_counter() - t0


def convert(root: Path, threads: int, memory_limit: str, on_error: str) -> dict:
    """Run ``prepare table`` in a child process; its wall time and peak RSS."""
    mapping = root / "mapping.yaml"
    mapping.write_text(MAPPING.format(events=root / "events.parquet"))
    cmd = [sys.executable, "-m", "cascade_ranking", "-q", "prepare", "table", str(root / "long"), str(root / "out"),
           "--mapping", str(mapping), "--threads", str(threads), "--memory-limit", memory_limit,
           "--on-error", on_error]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"prepare table failed:\n{done.stdout}\n{done.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "output": done.stdout.strip().splitlines()[-3:]}


def _dataset_facts(out: Path) -> dict:
    schema = json.loads((out / "schema.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "requests": sum(p["num_requests"] for p in schema["partitions"]),
        "partitions": len(schema["partitions"]),
        "vocab_sizes": {f["name"]: f["vocab_size"] for f in schema["features"]},
        "dataset_mib": size / 2**20,
        "dropped": schema["provenance"].get("dropped", {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--candidates", type=int, default=50, help="rows per request")
    ap.add_argument("--events", type=int, default=None, help="events table rows (default rows / 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--on-error", default="raise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the table is generated (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="convert-table-", dir=args.workdir))
    try:
        rows, gen_s = generate(root, args.rows, args.days, args.candidates, args.events or args.rows // 10, args.seed)
        src_mib = sum(p.stat().st_size for p in (root / "long").rglob("*.parquet")) / 2**20
        load_before = os.getloadavg()[0]
        run = convert(root, args.threads, args.memory_limit, args.on_error)
        run["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        facts = _dataset_facts(root / "out")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "rows": rows, "days": args.days, "rows_per_request": args.candidates, "num_candidates": 40,
        "events": args.events or args.rows // 10, "history_length": 20, "threads": args.threads,
        "memory_limit": args.memory_limit, "source_parquet_mib": round(src_mib, 1), "generate_seconds": round(gen_s, 1),
        "convert_seconds": round(run["seconds"], 1), "rows_per_second": round(rows / run["seconds"]),
        "peak_rss_mib": round(run["peak_rss_mib"]), "load_average_before_after": run["load_average"], **facts,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }  # fmt: skip
    table = "\n".join([
        "| rows | requests | threads | memory limit | convert (s) | rows/s | peak RSS (MiB) | source (MiB) "
        "| dataset (MiB) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {rows:,} | {facts['requests']:,} | {args.threads} | {args.memory_limit} | {result['convert_seconds']} | "
        f"{result['rows_per_second']:,} | {result['peak_rss_mib']:,} | {src_mib:.0f} | {facts['dataset_mib']:.0f} |",
    ])  # fmt: skip
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        before, after = run["load_average"]
        note = (
            f"Command: `python benchmarks/convert_table.py --rows {args.rows} --threads {args.threads}`; 1-minute load "
            f"average before / after the conversion: {before} / {after} on {os.cpu_count()} CPUs (other jobs share "
            "the machine).\n"
        )
        (args.out / "results.md").write_text(f"# prepare table: {rows:,}-row synthetic long table\n\n{table}\n\n{note}")


if __name__ == "__main__":
    main()

"""Bounded loopback load test of `cascade-ranking serve`: p50 / p99 latency and requests/s at concurrency 1, 8, 32.

Starts the server on 127.0.0.1 (a free port; loopback only) for a run folder or an export, sends the test
requests of its dataset as JSON (``POST /recommend``, k=10) from ``C`` client threads with keep-alive
connections, ``--requests`` per concurrency level, then stops the server. Latency is measured by the client
(request sent to answer read). Every answer must be 200, or the level is reported as failed.

Run: ``python benchmarks/serve_load.py RUN [--requests 400] [--threads 2] [--out docs/results/serving]``.
Writes ``load.json`` and ``load.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(run: Path, limit: int) -> list[bytes]:
    """JSON bodies of the run's test requests (user, context, history fields as the model reads them)."""
    from cascade_ranking.serving.export import load_recommender

    rec = load_recommender(run)
    schema = rec.schema
    data = Path(rec.info["data"])
    from cascade_ranking.data.store import read_partition

    arrays = read_partition(data, schema, schema.partitions_with_role("test")[0])
    out = []
    for b in range(min(limit, len(arrays["request_id"]))):
        valid = arrays[f"history.{schema.history[0].name}"][b] != 0 if schema.history else None
        body = {
            "user": {f.name: int(arrays[f"user.{f.name}"][b]) for f in schema.fields_with_role("user")},
            "context": {f.name: int(arrays[f"context.{f.name}"][b]) for f in schema.fields_with_role("context")},
            "history": {h.name: arrays[f"history.{h.name}"][b][valid].tolist() for h in schema.history},
            "k": 10,
            "request_id": int(arrays["request_id"][b]),
        }
        out.append(json.dumps(body).encode())
    return out


def level(port: int, payloads: list[bytes], concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            conn.request("POST", "/recommend", payloads[i % len(payloads)], {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt * 1e3)
                if response.status != 200:
                    failures.append(response.status)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failed": len(failures),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "requests_per_s": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder or an export")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch/FAISS threads")
    parser.add_argument("--out", type=Path, default=Path("docs/results/serving"))
    args = parser.parse_args()
    payloads = bodies(args.run, 500)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "cascade_ranking", "-q", "serve", str(args.run), "--host", "127.0.0.1",
           "--port", str(port), "--threads", str(args.threads)]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/metadata")
                meta = json.loads(c.getresponse().read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        level(port, payloads, 1, 20)  # warm-up
        rows = [level(port, payloads, c, args.requests) for c in (1, 8, 32)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"run": str(args.run), "server_threads": args.threads, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "catalogue_size": meta["catalogue_size"], "keep": meta["keep"],
              "stages": meta["stages"], "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| concurrency | requests | failed | p50 ms | p99 ms | requests/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['requests_per_s']:.1f} |")  # fmt: skip
    head = (f"catalogue {meta['catalogue_size']} items, keep {meta['keep']}, k=10, server threads {args.threads}, "
            f"load average before {result['load_average'][0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    (args.out / "load.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print(head)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

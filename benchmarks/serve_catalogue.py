"""One-request latency of `recommend` over a simulated catalogue of 1,000,000 items on 2 CPU cores.

A three-stage cascade (DSSM retrieval -> RankTower pre-ranking from cached item multi-embeddings -> DIN ranking;
the models' sizes as in training, weights at their initialisation: latency does not depend on training) over a
synthetic schema with 1,000,000 items (item id, genre, year) and 10,000 users, history length 50. For the exact
index (FAISS IndexFlatIP) and approximate ones (IVF at several ``nprobe``; HNSW at several ``ef_search``):

* recall of the exact index's top ``keep[0]`` by the approximate index's top ``keep[0]`` (the same user vectors);
* p50 / p99 milliseconds of ``Recommender.recommend`` for one request at a time (every stage, exclusion of the
  history included), after warm-up: wall-clock, and the CPU time of the process (what a request costs on a
  core of its own: on a machine shared with other work the wall clock also counts waiting for a core; with
  several threads the CPU time also counts OpenMP's spinning, so ``--threads 1`` gives the cleaner figure);
* memory: the process's resident set size after building, and the bytes of the index vectors and item caches.

Run: ``python benchmarks/serve_catalogue.py [--items 1000000] [--requests 300] [--threads 1] [--nlist 1024]
[--hnsw] [--out docs/results/serving]`` (torch and FAISS threads: ``--threads``, default 2). Stops by itself;
writes ``catalogue_1m.json`` and ``catalogue_1m.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cascade_ranking.data.schema import CategoricalField, DatasetSchema, HistoryField
from cascade_ranking.models import build_model
from cascade_ranking.serving import Catalogue, IndexOptions, ItemIndex, Recommender, Requests
from cascade_ranking.serving.index import import_faiss
from cascade_ranking.serving.stages import build_stage

KEEP = (1000, 200, 50)
K = 10


def rss_mib() -> float:
    """Resident set size of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def simulated(items: int, users: int) -> tuple[DatasetSchema, Catalogue]:
    schema = DatasetSchema(
        name=f"simulated-{items}",
        features=[
            CategoricalField(name="user_id", role="user", vocab_size=users + 1),
            CategoricalField(name="age", role="user", vocab_size=8),
            CategoricalField(name="hour", role="context", vocab_size=25),
            CategoricalField(name="item_id", role="item", vocab_size=items + 1),
            CategoricalField(name="genre", role="item", vocab_size=20),
            CategoricalField(name="year", role="item", vocab_size=11),
        ],
        history=[HistoryField(name="item_id", item_field="item_id"), HistoryField(name="genre", item_field="genre")],
        history_length=50,
        num_candidates=KEEP[0],
        funnel_positions=["neg", "pos"],
        keep=list(KEEP),
        gt_num=10,
        partitions=[],
    )
    rng = np.random.default_rng(0)
    ids = np.arange(1, items + 1)
    fields = {"item_id": ids, "genre": rng.integers(1, 20, items), "year": rng.integers(1, 11, items)}
    return schema, Catalogue.from_arrays(schema, fields)


def requests(schema: DatasetSchema, catalogue: Catalogue, n: int, seed: int) -> Requests:
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, catalogue.size + 1, size=(n, 30))
    columns = {
        "user.user_id": rng.integers(1, schema.feature("user_id").vocab_size, n),
        "user.age": rng.integers(1, 8, n),
        "context.hour": rng.integers(1, 25, n),
        "history.item_id": hist,
        "history.genre": catalogue.fields["genre"][hist - 1],
    }
    return Requests.from_columns(schema, columns)


def latency(rec: Recommender, reqs: Requests, keep) -> dict:
    """Wall-clock and CPU milliseconds (all threads of the process) of one request at a time, after 10 warm-up."""
    times, cpu = [], []
    for b in range(len(reqs)):
        t, c = time.perf_counter(), time.process_time()
        rec.recommend(reqs.select(slice(b, b + 1)), K, keep=keep)
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    times, cpu = times[10:], cpu[10:]
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99))}  # fmt: skip


def recall(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int) -> float:
    _, truth = exact.search(queries, k)
    _, got = index.search(queries, k)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nlist", type=int, default=1024, help="IVF cells")
    parser.add_argument("--hnsw", action="store_true", help="also HNSW (its build takes long on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/serving"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import_faiss().omp_set_num_threads(args.threads)
    torch.manual_seed(0)
    schema, catalogue = simulated(args.items, 10_000)
    items = {n: torch.from_numpy(a) for n, a in catalogue.fields.items()}
    t = time.perf_counter()
    stages = [build_stage(name, build_model(m, schema), items) for name, m in
              zip(("retrieval", "prerank", "rank"), ("dssm", "ranktower", "din"))]  # fmt: skip
    cache_seconds = time.perf_counter() - t
    reqs = requests(schema, catalogue, args.requests, seed=1)
    with torch.no_grad():
        queries = stages[0].user_side(requests(schema, catalogue, 200, seed=2).tensors()).numpy()
    vectors = stages[0].items.numpy()
    exact = ItemIndex(vectors, IndexOptions(kind="exact"))
    rows = []
    configs = [IndexOptions(kind="exact")]
    configs += [IndexOptions(kind="ivf", nlist=args.nlist, nprobe=p) for p in (64, 128, 256)]
    if args.hnsw:
        configs += [IndexOptions(kind="hnsw", m=32, ef_search=e) for e in (1000, 2000)]
    built: dict[tuple, ItemIndex] = {}
    for options in configs:
        t = time.perf_counter()
        base = (options.kind, options.nlist, options.m)
        index = built.get(base) or ItemIndex(vectors, options)
        build_seconds = time.perf_counter() - t
        built[base] = index
        index.tune(nprobe=options.nprobe, ef_search=options.ef_search)  # this row's search parameters
        rec = Recommender(schema, catalogue, stages, keep=KEEP, index=index)
        row = {"index": options.kind, "nprobe": options.nprobe if options.kind == "ivf" else None,
               "ef_search": options.ef_search if options.kind == "hnsw" else None,
               "build_s": round(build_seconds, 1), f"recall@{KEEP[0]}": recall(index, exact, queries, KEEP[0]),
               **latency(rec, reqs, KEEP), "rss_mib": round(rss_mib())}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    caches = {s.name: int(s.items.numel() * 4) for s in stages if s.items is not None}
    result = {
        "items": args.items,
        "keep": list(KEEP),
        "k": K,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),  # other work on the machine inflates wall-clock times
        "platform": platform.platform(),
        "torch": torch.__version__,
        "item_cache_seconds": round(cache_seconds, 1),
        "item_cache_bytes": caches,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "catalogue_1m.json").write_text(json.dumps(result, indent=2) + "\n")
    head = ["index", "nprobe", "ef_search", "build_s", f"recall@{KEEP[0]}", "p50_ms", "p99_ms", "cpu_p50_ms",
            "cpu_p99_ms", "rss_mib"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ["" if r[h] is None else (f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h])) for h in head]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "catalogue_1m.md").write_text(
        f"{args.items:,} items, keep {list(KEEP)}, k={K}, {args.threads} threads, load average "
        f"{result['load_average'][0]:.1f} on {os.cpu_count()} CPUs; item caches "
        f"{ {n: f'{b / 2**20:.0f} MiB' for n, b in caches.items()} }\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()

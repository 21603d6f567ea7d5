"""Does a method's joint-recall lead survive when the candidates are the whole catalogue?

For every finished run of a benchmark folder (``cascade-ranking benchmark --out DIR``: ``DIR/runs/<method>-seed<s>``)
this puts the logged-candidate joint recall (``metrics.json``, test) next to the full-catalogue columns of
:func:`cascade_ranking.serving.evaluation.benchmark_columns` (every test request selects from all catalogue items:
Recall@10 and NDCG@10 of its held-out impressions, the share of impressions each stage keeps, milliseconds per
request and stage), mean ± std over seeds, best first by catalogue Recall@10.

Run: ``python benchmarks/catalogue_eval.py DIR [--keep 500,100] [--out docs/results/serving/catalogue-2stage]``.
Serving keep sizes default to 500,100 (two stages) / 1000,300,100 (three). Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.serving import Catalogue
from cascade_ranking.serving.evaluation import benchmark_columns, ndcg_at_k, recall_at_k
from cascade_ranking.training.evaluate import PopularityScorer


def fmt(values: list[float], digits: int = 4) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def popularity(data: Path, k: int) -> dict[str, float]:
    """Reference row: the k catalogue items most often in the top funnel group of the training weeks, history
    items excluded, scored like the cascades (no stages: its kept share is not defined)."""
    schema = open_dataset(data)
    catalogue = Catalogue.from_dataset(data, schema)
    counts = PopularityScorer.fit(data, schema, 1).counts.numpy()[catalogue.keys]
    order = catalogue.keys[np.argsort(-counts, kind="stable")]
    key, top = catalogue.key, len(schema.funnel_positions) - 1
    recalls, ndcgs = [], []
    for part in schema.partitions_with_role("test"):
        a = read_partition(data, schema, part)
        for b in range(len(a["request_id"])):
            held = a["mask"][b] & (a["stage"][b] == top)
            pos, gains = a[f"item.{key}"][b][held], np.maximum(a["label"][b][held], 0)
            if not len(pos):
                continue
            seen = a[f"history.{key}"][b] if f"history.{key}" in a else np.zeros(0)
            rec = order[~np.isin(order, seen)][:k]
            recalls.append(recall_at_k(rec, pos))
            ndcgs.append(ndcg_at_k(rec, pos, gains))
    return {f"catalogue_recall@{k}": float(np.mean(recalls)), f"catalogue_ndcg@{k}": float(np.mean(ndcgs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--keep", type=str, default=None)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep = [int(x) for x in args.keep.split(",")] if args.keep else None
    rows: dict[str, list[dict]] = {}
    for run in sorted((args.bench / "runs").iterdir()):
        metrics_file = run / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        columns = benchmark_columns(run, k=args.k, keep=keep)
        rows.setdefault(metrics["method"], []).append({"joint_recall": metrics["test"]["joint_recall"], **columns})
        recall = columns[f"catalogue_recall@{args.k}"]
        print(f"{run.name}: joint recall {metrics['test']['joint_recall']:.4f}, catalogue Recall@{args.k} {recall:.4f}")
    stages = [c.split("/")[1] for c in next(iter(rows.values()))[0] if c.startswith("catalogue_recall/")]
    head = ["method", "seeds", "joint recall (logged)", f"Recall@{args.k}", f"NDCG@{args.k}"]
    head += [f"kept by {s}" for s in stages] + [f"ms/{s}" for s in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(rows, key=lambda m: -statistics.fmean(r[f"catalogue_recall@{args.k}"] for r in rows[m]))
    for method in order:
        rs = rows[method]
        cells = [method, str(len(rs)), fmt([r["joint_recall"] for r in rs])]
        cells += [fmt([r[f"catalogue_recall@{args.k}"] for r in rs]), fmt([r[f"catalogue_ndcg@{args.k}"] for r in rs])]
        cells += [fmt([r[f"catalogue_recall/{s}"] for r in rs]) for s in stages]
        cells += [f"{statistics.fmean(r[f'latency_ms/{s}'] for r in rs):.2f}" for s in stages]
        lines.append("| " + " | ".join(cells) + " |")
    data = Path(json.loads((next((args.bench / "runs").iterdir()) / "config.json").read_text())["data"])
    pop = popularity(data, args.k)
    cells = ["popularity (reference)", "-", "-", f"{pop[f'catalogue_recall@{args.k}']:.4f}",
             f"{pop[f'catalogue_ndcg@{args.k}']:.4f}"] + ["-"] * (2 * len(stages))  # fmt: skip
    lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

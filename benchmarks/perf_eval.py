"""Data loading and evaluation throughput (run inside a fresh worker process).

* loading: requests/s of ``data.loader.iterate_partition`` over a partition of the Parquet store (read the
  file, shuffle requests and candidate slots, build every batch's tensors), median over passes;
* metrics: requests/s of ``metrics.CascadeMetrics.update`` on already scored batches (joint recall, stage
  recall, NDCG@10, Kendall's tau for every stage);
* evaluate: requests/s of ``evaluate.evaluate`` with an untrained cascade: load, score with every stage,
  accumulate the metrics (no gradient).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from perf_train import build, peak_rss_bytes


def run_loading(spec: dict) -> dict:
    """``spec``: data, batch_size, repeats. Every pass reads the whole partition anew."""
    from cascade_ranking.data.loader import iterate_partition
    from cascade_ranking.data.store import open_dataset, read_partition

    data = Path(spec["data"])
    schema = open_dataset(data)
    part = schema.partitions[0]
    rng = np.random.default_rng(0)
    rates, reads, cpu_rates = [], [], []
    for r in range(spec.get("repeats", 3) + 1):
        c = time.process_time()
        t = time.perf_counter()
        n = sum(
            b.batch_size
            for b in iterate_partition(data, schema, part, batch_size=spec["batch_size"], shuffle=True, rng=rng)
        )
        dt = time.perf_counter() - t
        dc = time.process_time() - c
        t = time.perf_counter()
        read_partition(data, schema, part)
        dr = time.perf_counter() - t
        if r:
            rates.append(n / dt)
            reads.append(n / dr)
            cpu_rates.append(n / dc)
    return {
        "requests": part.num_requests,
        "batch_size": spec["batch_size"],
        "requests_per_second": statistics.median(rates),
        "requests_per_second_all": rates,
        "read_only_requests_per_second": statistics.median(reads),
        "requests_per_cpu_second": statistics.median(cpu_rates),
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "label": spec.get("label", "current"),
    }


def run_evaluation(spec: dict) -> dict:
    """``spec``: data, stages, batch_size, repeats."""
    from cascade_ranking.data.loader import to_batch
    from cascade_ranking.data.store import open_dataset, read_partition
    from cascade_ranking.metrics import CascadeMetrics
    from cascade_ranking.training.evaluate import evaluate

    data = Path(spec["data"])
    schema = open_dataset(data)
    names = ["retrieval", "prerank", "rank"][: len(schema.keep)]
    part = schema.partitions[0]
    bs = spec["batch_size"]
    arrays = read_partition(data, schema, part)
    batches = [to_batch({k: v[s : s + bs] for k, v in arrays.items()}, schema) for s in range(0, part.num_requests, bs)]
    g = torch.Generator().manual_seed(0)
    scored = [([torch.randn(b.mask.shape, generator=g) for _ in names], b) for b in batches]
    metric_rates = []
    for r in range(spec.get("repeats", 3) + 1):
        m = CascadeMetrics(names, schema.keep, schema.gt_num)
        for logits, b in scored:
            t = time.perf_counter()
            m.update(logits, b.label, b.mask)
            if r:
                metric_rates.append(b.batch_size / (time.perf_counter() - t))
    torch.manual_seed(0)
    cascade = build(schema, "bce")[0].eval()
    eval_rates = []
    for r in range(spec.get("repeats", 3) + 1):
        t = time.perf_counter()
        out = evaluate(
            cascade, data, schema, [part], stage_names=names, keep=schema.keep, gt_num=schema.gt_num, batch_size=bs
        )
        if r:
            eval_rates.append(part.num_requests / (time.perf_counter() - t))
    return {
        "stages": len(schema.keep),
        "requests": part.num_requests,
        "batch_size": bs,
        "metrics_requests_per_second": statistics.median(metric_rates),
        "evaluate_requests_per_second": statistics.median(eval_rates),
        "evaluate_requests_per_second_all": eval_rates,
        "requests_counted": out.get("requests"),
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "label": spec.get("label", "current"),
    }

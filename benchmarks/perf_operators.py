"""Relaxed top-k operators and the losses built on them as the candidate list grows; one command.

Usage::

    python benchmarks/perf_operators.py [--quick] [--budget 20000] [--out docs/results/operators/perf.json]

Three sections, every configuration in a fresh worker process (``run.py``'s workers; peak memory is the
resident set growth over the timed call, sampled every 0.5 ms), the torch thread count printed:

1. **operators**: forward + backward of ``operators.get(name).soft_topk(scores, k=10, tau=1)`` (weighted sum
   of the memberships) for every registered operator, N = 40 ... 10,000 at a fixed ``B * N`` (``--budget``);
2. **losses**: forward + backward of the loss alone (two stages, keep 30/20, gt_num 10, RecFlow-like labels,
   :mod:`perf_loss`): ``dftopk`` (DFTopK's loss), ``lcron`` (NeuralSort, the default), LCRON over the other
   operators, at the same sizes;
3. **training**: requests/s and candidates/s of a 2-stage cascade (DSSM + DIN, batches pre-loaded, Adam; as
   ``run.py``'s training section) at N = 40, 1,000 and 10,000 with a fixed ``B * N`` = 40,960 candidates per
   step (B = 1024 at N = 40), for ``dftopk`` and ``lcron``.

Prints the tables and writes all figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_operator(spec: dict) -> dict:
    """Worker: forward + backward of one operator. ``spec``: name, num (N), batch (B), repeats."""
    from perf_train import RssSampler, peak_rss_bytes

    from cascade_ranking import operators

    op = operators.get(spec["name"])
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(spec["batch"], spec["num"], generator=g, requires_grad=True)
    weights = torch.randn(spec["batch"], spec["num"], generator=g)
    times, extra = [], 0
    for r in range(spec.get("repeats", 3) + 1):
        scores.grad = None
        with RssSampler() as rss:
            t = time.perf_counter()
            (op.soft_topk(scores, 10, tau=1.0) * weights).sum().backward()
            dt = time.perf_counter() - t
        extra = max(extra, rss.extra)
        if r:  # the first call warms up
            times.append(dt)
    med = statistics.median(times)
    return {
        "name": spec["name"],
        "num": spec["num"],
        "batch": spec["batch"],
        "seconds": med,
        "seconds_all": times,
        "extra_peak_bytes": extra,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
    }


def _sizes(quick: bool) -> list[int]:
    return [40, 1000, 10000] if quick else [40, 200, 1000, 2000, 5000, 10000]


def run_all(args: argparse.Namespace) -> dict:
    sys.path[:0] = [str(REPO / "src"), str(HERE)]  # this checkout's package, as the workers
    from run import spawn

    from cascade_ranking import operators

    src = REPO / "src"
    threads = {"threads": args.threads} if args.threads else {}
    out: dict = {"budget": args.budget, "operators": [], "losses": [], "training": []}
    for num in _sizes(args.quick) if "operators" in args.sections else []:
        batch = max(1, args.budget // num)
        for name in operators.available():
            r = spawn("operator", {"name": name, "num": num, "batch": batch, "repeats": args.repeats, **threads}, src)
            out["operators"].append(r)
            print(f"operator {name:12s} N={num:6d} B={batch:5d} {r.get('seconds', float('nan')):.4f}s", flush=True)
        losses = [("dftopk", {}), ("lcron", {})] + [("lcron", {"operator": o, "tau": 1.0}) for o in args.lcron_ops]
        for method, hyper in losses:
            spec = {"method": method, "hyper": hyper, "num": num, "batch": batch, "repeats": args.repeats, **threads}
            r = spawn("loss", spec, src)
            r["hyper"] = hyper
            out["losses"].append(r)
            print(f"loss {method} {hyper} N={num} {r.get('seconds', float('nan')):.4f}s", flush=True)
    for num in [40, 1000, 10000] if "training" in args.sections else []:
        batch = max(1, 40960 // num)
        for method in ("dftopk", "lcron"):
            if method == "lcron" and num > 1000:
                continue  # [B, N, N] NeuralSort: measured in the loss section instead
            spec = {"method": method, "stages": 2, "mode": "preloaded", "label": "current", "candidates": num,
                    "batch_size": batch, "steps": args.steps, "warmup": 1, "guard": True, **threads}  # fmt: skip
            r = spawn("train", spec, src)
            out["training"].append(r)
            print(f"train {method} N={num} {r.get('candidates_per_second', float('nan')):.0f} cand/s", flush=True)
    out["threads"] = args.threads or torch.get_num_threads()
    return out


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def print_tables(res: dict) -> None:
    print(f"\ntorch threads: {res['threads']}; fixed B*N = {res['budget']}")
    print("\n1. operator forward + backward (k = 10)\n")
    print("| operator | N | B | time (ms) | extra peak memory (MiB) |\n|---|---|---|---|---|")
    for r in res["operators"]:
        sec = r.get("seconds")
        t = "error" if sec is None else f"{sec * 1e3:.2f}"
        print(f"| {r['name']} | {r['num']} | {r['batch']} | {t} | {_mb(r.get('extra_peak_bytes'))} |")
    print("\n2. loss forward + backward (2 stages, keep 30/20, gt_num 10)\n")
    print("| loss | N | B | time (ms) | extra peak memory (MiB) |\n|---|---|---|---|---|")
    for r in res["losses"]:
        label = r["method"] + (f" ({r['hyper']['operator']})" if r.get("hyper") else "")
        sec = r.get("seconds")
        t = "error: " + " ".join(r.get("error", [])) if sec is None else f"{sec * 1e3:.2f}"
        print(f"| {label} | {r['num']} | {r['batch']} | {t} | {_mb(r.get('extra_peak_bytes'))} |")
    by = {(r["method"], r["num"]): r for r in res["losses"] if not r.get("hyper") and "seconds" in r}
    for num in sorted({n for _, n in by}):
        if ("dftopk", num) in by and ("lcron", num) in by:
            d, n = by[("dftopk", num)], by[("lcron", num)]
            mem = n["extra_peak_bytes"] / max(d["extra_peak_bytes"], 1)
            print(f"N={num}: DFTopK loss {n['seconds'] / d['seconds']:.1f}x faster, {mem:.1f}x less memory than LCRON")
    print("\n3. training throughput, 2 stages (DSSM + DIN), B*N = 40,960 per step\n")
    print("| method | N | B | requests/s | candidates/s | vs N=40 |\n|---|---|---|---|---|---|")
    base = {r["method"]: r.get("candidates_per_second") for r in res["training"] if r.get("candidates") == 40}
    for r in res["training"]:
        cps = r.get("candidates_per_second")
        if cps is None:
            print(f"| {r['method']} | {r.get('candidates')} | - | error | | |")
            continue
        ratio = cps / base[r["method"]] if base.get(r["method"]) else float("nan")
        print(f"| {r['method']} | {r['candidates']} | {r['batch_size'] if 'batch_size' in r else '-'} | "
              f"{r['requests_per_second']:,.1f} | {cps:,.0f} | {ratio:.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 40, 1000, 10000 only")
    p.add_argument("--budget", type=int, default=20_000, help="B * N of the operator and loss sections")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--lcron-ops", default="softsort,dftopk", help="operators to run LCRON over (besides NeuralSort)")
    p.add_argument("--sections", default="operators,training", help="operators (sections 1-2), training (3)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    args.lcron_ops = [o for o in args.lcron_ops.split(",") if o]
    res = run_all(args)
    print_tables(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

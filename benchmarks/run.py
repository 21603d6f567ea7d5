"""Performance benchmarks of cascade-ranking: training, data loading, loss scaling, evaluation; one command.

Usage::

    python benchmarks/run.py [--quick] [--out results.json] [--baseline REV] [--rounds R] [--methods lcron,bce]
                             [--variants fused-adam,malloc] [--threads N] [--items 1000000] [--fused-adam]
                             [--no-guard]

Prints tables and writes every figure (with the machine, its load before and after, and the torch thread
count) as JSON. Data: random RecFlow-shaped requests (:mod:`perf_data`: 8 user/context fields, 8 item fields,
5 history fields of length 50, embedding dim 8, N = 40 candidates for two stages, 50 for three) written to a
Parquet store in a temporary folder with ``cascade_ranking.data.store``. Sections:

1. training throughput, requests/s at batch 1024 (forward + loss + backward + non-finite guard + Adam step), for
   every method of ``losses.available()`` on DSSM+DIN (two stages) and DSSM+MLP+DIN (three stages), with
   batches pre-loaded (data loading excluded; the time of each part of the step too) and streamed from the
   store (loading included); peak resident memory of each configuration (each runs in a fresh process);
2. loss-only time (forward + backward) of the sorting losses as N grows at a fixed ``B * N``: ``O(B N^2)``
   means flat time and memory per ``B N^2`` cell;
3. data loading throughput from the store (``data.loader.iterate_partition``);
4. evaluation throughput: ``CascadeMetrics`` over scored batches, and the full ``evaluate`` path;
5. the machine's matmul FLOP/s and the achieved FLOP/s of the training step (:mod:`perf_flops`).

Every figure is a median over repeats (steps, partitions, passes). ``--baseline REV`` runs the training and
loss workers a second time with the package as of git revision ``REV`` (``git archive``, read-only) and
prints the ratios, measured side by side (each baseline run right after its current counterpart);
``--rounds R`` repeats every training and loss worker R times, alternating, and keeps the median run (a shared
machine's load drifts: the CPU / wall column shows how much of the wall time a worker actually ran).
``--quick`` (a subset: LCRON and BCE, fewer steps and sizes) finishes in about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

QUICK = {
    "methods": ["lcron", "bce"],
    "stream_parts": 2,
    "per_part": 2048,
    "steps": 3,
    "warmup": 1,
    "loss_methods": ["lcron"],
    "loss_sizes": [40, 200, 1000],
    "loss_repeats": 2,
    "load_requests": 16384,
    "load_repeats": 5,
    "repeats": 2,
    "eval_requests": 8192,
}
FULL = {
    "methods": None,  # every method of losses.available()
    "stream_parts": 3,
    "per_part": 2048,
    "steps": 5,
    "warmup": 1,
    "loss_methods": ["lcron", "arf", "arf_v2"],
    "loss_sizes": [40, 100, 200, 500, 1000],
    "loss_repeats": 3,
    "load_requests": 65536,
    "load_repeats": 5,
    "repeats": 3,
    "eval_requests": 16384,
}
#: ``--variants``: the current code under another setting (worker environment, spec additions), measured
#: side by side: Adam's fused CPU kernel, and glibc malloc options that keep freed memory for reuse (so the
#: step's 20-32 MB activations and gradients are not page-faulted in anew every step).
VARIANTS = {
    "fused-adam": ({}, {"fused_adam": True}),
    "malloc": (
        {
            "MALLOC_MMAP_THRESHOLD_": str(1 << 25),
            "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
            "MALLOC_TOP_PAD_": str(1 << 28),
        },
        {},
    ),
}
LOSS_BUDGET = 20480  # B * N of the loss-scaling runs (B = 512 at N = 40, 20 at N = 1000)


# ------------------------------------------------------------------------------------------------------
# workers (fresh processes)
# ------------------------------------------------------------------------------------------------------
def worker(kind: str, spec: dict) -> dict:
    default_policy = spec.get("thread_policy") == "default"
    if default_policy:  # what the cascade-ranking command does, before torch is imported
        from cascade_ranking.training.threads import passive_openmp_wait

        passive_openmp_wait()
    import torch

    if default_policy:
        from cascade_ranking.training.threads import resolve_threads

        resolve_threads(None)
    elif spec.get("threads") and spec["threads"] != "auto":
        torch.set_num_threads(int(spec["threads"]))
    if kind == "train":
        from perf_train import run_training

        return run_training(spec)
    if kind == "loss":
        from perf_loss import run_loss

        return run_loss(spec)
    if kind == "load":
        from perf_eval import run_loading

        return run_loading(spec)
    if kind == "eval":
        from perf_eval import run_evaluation

        return run_evaluation(spec)
    if kind == "operator":
        from perf_operators import run_operator

        return run_operator(spec)
    raise ValueError(f"unknown worker kind {kind!r}")


def spawn(kind: str, spec: dict, src: Path, timeout: float = 1800, env: dict[str, str | None] | None = None) -> dict:
    """Run one worker in a fresh interpreter with ``src`` first on the path; return its JSON result."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset the variable
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"], **spec}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------------
def baseline_source(rev: str, into: Path) -> Path:
    """The package's ``src/`` as of git revision ``rev``, extracted with ``git archive`` (read-only)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def available_methods() -> list[str]:
    from cascade_ranking import losses

    return losses.available()


def make_data(root: Path, cfg: dict, vocab) -> dict[str, Path]:
    from perf_data import write_dataset

    paths = {}
    for stages in (2, 3):
        path = root / f"stream{stages}"
        write_dataset(path, stages, cfg["per_part"], vocab=vocab, partitions=1 + cfg["stream_parts"], seed=stages)
        paths[f"stream{stages}"] = path
    paths["load"] = root / "load"
    write_dataset(paths["load"], 2, cfg["load_requests"], vocab=vocab, partitions=1, seed=7)
    paths["eval3"] = root / "eval3"
    write_dataset(paths["eval3"], 3, cfg["eval_requests"], vocab=vocab, partitions=1, seed=8)
    return paths


def run_all(args: argparse.Namespace) -> dict:
    import torch
    from perf_data import Vocab
    from perf_machine import load_average, machine_info, matmul_gflops

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    methods = args.methods.split(",") if args.methods else (cfg["methods"] or available_methods())
    vocab = Vocab(items=args.items, authors=max(10, args.items // 5))
    results: dict = {
        "quick": args.quick,
        "load_average_before": load_average(),
        "machine": machine_info(),
        "config": {**cfg, "methods": methods, "vocab": vars(vocab), "batch_size": 1024, "fused_adam": args.fused_adam,
                   "guard": not args.no_guard, "baseline": args.baseline, "loss_budget_BN": LOSS_BUDGET,
                   "rounds": args.rounds, "variants": args.variants},
    }  # fmt: skip
    t_start = time.perf_counter()
    results["matmul"] = matmul_gflops(2048, repeats=3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="cascade-perf-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        data = make_data(tmp, cfg, vocab)
        results["data_seconds"] = time.perf_counter() - t
        sources = [("current", REPO / "src", {}, {})]  # label, package src, worker env, spec additions
        if args.baseline:
            sources.append((f"baseline {args.baseline}", baseline_source(args.baseline, tmp), {}, {}))
        common = {"threads": args.threads, "vocab": vars(vocab)}
        variants = [v for v in (args.variants or "").split(",") if v]
        train_sources = list(sources) + [(f"current +{v}", REPO / "src", *VARIANTS[v]) for v in variants]

        def rounds(kind: str, spec: dict, srcs, key: str = "requests_per_second") -> list[dict]:
            """Every source ``args.rounds`` times, alternating; the median run of each."""
            runs: dict[str, list[dict]] = {}
            for _ in range(args.rounds):
                for label, src, env, extra in srcs:
                    r = spawn(kind, {**spec, **extra, "label": label}, src, env=env)
                    runs.setdefault(label, []).append(r)
                    _progress(kind, r, key)
            return [median_run(rs, key) for rs in runs.values()]

        train, want = [], set((args.sections or "train,loss,load,eval").split(","))
        for stages in (int(k) for k in args.stages.split(",")) if "train" in want else ():
            for method in methods:
                for mode in ("preloaded", "stream"):
                    spec = {"method": method, "stages": stages, "mode": mode, "data": str(data[f"stream{stages}"]),
                            "steps": cfg["steps"], "warmup": cfg["warmup"], "fused_adam": args.fused_adam,
                            "guard": not args.no_guard, **common}  # fmt: skip
                    train += rounds("train", spec, train_sources)
        results["training"] = train
        results["loss_scaling"] = [
            r
            for method in (cfg["loss_methods"] if "loss" in want else ())
            for num in cfg["loss_sizes"]
            for r in rounds(
                "loss",
                {
                    "method": method,
                    "num": num,
                    "batch": max(1, LOSS_BUDGET // num),
                    "repeats": cfg["loss_repeats"],
                    **common,
                },
                sources,
            )  # fmt: skip
        ]
        load_spec = {"data": str(data["load"]), "batch_size": 1024, "repeats": cfg["load_repeats"], **common}
        results["loading"] = rounds("load", load_spec, sources) if "load" in want else []
        results["evaluation"] = [
            r
            for key in (("load", "eval3") if "eval" in want else ())
            for r in rounds(
                "eval",
                {"data": str(data[key]), "batch_size": 4096, "repeats": cfg["repeats"], **common},
                sources,
                key="evaluate_requests_per_second",
            )  # fmt: skip
        ]
    results["roofline"] = roofline(results)
    results["seconds"] = time.perf_counter() - t_start
    results["load_average_after"] = load_average()
    return results


def median_run(runs: list[dict], key: str = "requests_per_second") -> dict:
    """The run with the median ``key`` of repeated workers (lower middle for an even count), with every
    round's figure and the highest peak memory of all rounds."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    ok.sort(key=lambda r: r[key])
    out = dict(ok[(len(ok) - 1) // 2])
    out["rounds"] = [r[key] for r in ok]
    for key in ("peak_rss_bytes", "extra_peak_bytes"):
        if key in out:
            out[key] = max(r[key] for r in ok)
    return out


def _progress(kind: str, r: dict, key: str = "requests_per_second") -> None:
    what = {k: r.get(k) for k in ("method", "stages", "mode", "num", "label") if r.get(k) is not None}
    rate = r.get(key)
    msg = f"{rate:,.0f} requests/s" if rate else f"ERROR {r.get('error')}"
    print(f"  [{kind}] {what}: {msg}", file=sys.stderr, flush=True)


def roofline(results: dict) -> list[dict]:
    """Achieved FLOP/s of the pre-loaded training steps vs the machine's matmul FLOP/s."""
    from perf_data import Vocab, perf_schema
    from perf_flops import step_flops
    from perf_train import STAGE_MODELS

    peak = results["matmul"]["gflops"]
    vocab = Vocab(**results["config"]["vocab"])
    out = []
    for r in results["training"]:
        if r.get("mode") != "preloaded" or "error" in r:
            continue
        schema = perf_schema(r["stages"], vocab)
        flops = step_flops(schema, STAGE_MODELS[r["stages"]], r["method"], 1024, r["parameters"])
        parts = r["parts_seconds"]
        compute = parts["forward"] + parts["loss"] + parts["backward"]
        out.append(
            {
                "method": r["method"],
                "stages": r["stages"],
                "label": r["label"],
                "gflop_per_step": {k: v / 1e9 for k, v in flops.items()},
                "achieved_gflops": flops["total"] / r["step_seconds"] / 1e9,
                "achieved_matmul_gflops_fwd_bwd": flops["matmul"] / compute / 1e9,
                "fraction_of_matmul_peak": flops["total"] / r["step_seconds"] / 1e9 / peak,
                # the same against torch.mm timed after every step in the same worker (same load, interleaved)
                "interleaved_matmul_gflops": r.get("interleaved_matmul_gflops"),
                "fraction_of_interleaved_matmul": (
                    flops["total"] / r["step_seconds"] / 1e9 / r["interleaved_matmul_gflops"]
                    if r.get("interleaved_matmul_gflops")
                    else None
                ),
                "dominant_part": max(parts, key=parts.get),
                "parts_share": {k: v / sum(parts.values()) for k, v in parts.items()},
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------
def _mb(x) -> str:
    return f"{x / 2**20:,.0f}" if isinstance(x, (int, float)) else "-"


def _ratio(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def _pct(x) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "-"


def _rate(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "-"


def print_tables(res: dict) -> None:
    m = res["machine"]
    print(f"\nMachine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
          f"{m['memory_gib']} GiB; torch {m['torch']}, {m['torch_threads']} threads")  # fmt: skip
    print(f"Load average (1/5/15 min): before {res['load_average_before']}, after {res['load_average_after']}")
    mm = res["matmul"]
    print(
        f"torch.mm {mm['size']}x{mm['size']} {mm['dtype']}: {mm['gflops']:.1f} GFLOP/s (best {mm['best_gflops']:.1f})"
    )
    labels = list(dict.fromkeys(r.get("label", "current") for r in res["training"]))

    print("\n## Training throughput (requests/s, batch 1024; median over steps / partitions)\n")
    print("| method | stages | label | preloaded | stream (incl. loading) | peak RSS MB (stream) | "
          "fwd / loss / bwd / guard / adam ms | CPU / wall |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---|---:|")
    rows: dict = {}
    for r in res["training"]:
        rows.setdefault((r.get("method"), r.get("stages"), r.get("label")), {})[r.get("mode")] = r
    for (method, stages, label), modes in rows.items():
        pre, st = modes.get("preloaded", {}), modes.get("stream", {})
        parts = pre.get("parts_seconds") or {}
        brk = (
            " / ".join(f"{parts[k] * 1e3:.0f}" for k in ("forward", "loss", "backward", "guard", "optimizer"))
            if parts
            else "-"
        )
        print(f"| {method} | {stages} | {label} | {_rate(pre.get('requests_per_second'))} | "
              f"{_rate(st.get('requests_per_second'))} | {_mb(st.get('peak_rss_bytes'))} | {brk} | "
              f"{_ratio(pre.get('cpu_per_wall'))} |")  # fmt: skip
    if len(labels) > 1:
        print("\n### Ratios (same run): current / baseline, and each variant / current\n")
        print("| comparison | method | stages | preloaded | stream | peak RSS |")
        print("|---|---|---:|---:|---:|---:|")
        for other in labels[1:]:
            num_label, den_label = ("current", other) if other.startswith("baseline") else (other, "current")
            for (method, stages, label), num in rows.items():
                if label != num_label:
                    continue
                den = rows.get((method, stages, den_label), {})
                cells = []
                for mode, key in (("preloaded", "requests_per_second"), ("stream", "requests_per_second"),
                                  ("stream", "peak_rss_bytes")):  # fmt: skip
                    x, y = num.get(mode, {}).get(key), den.get(mode, {}).get(key)
                    cells.append(f"{x / y:.2f}x" if x and y else "-")
                print(f"| {num_label} / {den_label} | {method} | {stages} | " + " | ".join(cells) + " |")

    print(f"\n## Loss only (forward + backward), B * N = {res['config']['loss_budget_BN']}, two stages\n")
    print("| method | label | N | B | ms | ns per B*N^2 cell | extra peak MB | bytes per cell |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in res["loss_scaling"]:
        if "error" in r:
            print(f"| {r.get('method')} | {r.get('label')} | {r.get('num')} | - | ERROR {r['error']} | | | |")
            continue
        print(f"| {r['method']} | {r['label']} | {r['num']} | {r['batch']} | {r['seconds'] * 1e3:.1f} | "
              f"{r['ns_per_cell']:.2f} | {_mb(r['extra_peak_bytes'])} | {r['extra_bytes_per_cell']:.0f} |")  # fmt: skip

    print("\n## Data loading and evaluation (requests/s)\n")
    for r in res["loading"]:
        print(f"- loading ({r.get('label')}): {_rate(r.get('requests_per_second'))} requests/s through the loader "
              f"(batch {r.get('batch_size')}, {r.get('requests')} requests per partition; "
              f"{_rate(r.get('requests_per_cpu_second'))} per CPU-second); Parquet read alone "
              f"{_rate(r.get('read_only_requests_per_second'))}")  # fmt: skip
    for r in res["evaluation"]:
        print(f"- evaluation, {r.get('stages')} stages ({r.get('label')}): CascadeMetrics "
              f"{_rate(r.get('metrics_requests_per_second'))}, full evaluate path "
              f"{_rate(r.get('evaluate_requests_per_second'))}")  # fmt: skip

    print("\n## Roofline (pre-loaded steps)\n")
    print("| method | stages | label | GFLOP/step (matmul / attention / loss / adam) | achieved GFLOP/s | "
          "% of matmul peak | matmul GFLOP/s between steps | % of it | dominant part |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|---:|---|")
    for r in res["roofline"]:
        g = r["gflop_per_step"]
        share = r["parts_share"][r["dominant_part"]]
        print(f"| {r['method']} | {r['stages']} | {r['label']} | {g['matmul']:.1f} / {g['attention']:.1f} / "
              f"{g['loss']:.2f} / {g['optimizer']:.2f} | {r['achieved_gflops']:.1f} | "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% | {_rate(r.get('interleaved_matmul_gflops'))} | "
              f"{_pct(r.get('fraction_of_interleaved_matmul'))} | "
              f"{r['dominant_part']} ({100 * share:.0f}%) |")  # fmt: skip
    print(f"\nTotal {res['seconds']:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset that runs in about two minutes")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    p.add_argument("--baseline", default=None, help="git revision to compare with (package src/ at that revision)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all; --quick: lcron,bce)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--items", type=int, default=1_000_000, help="item vocabulary (authors = items / 5)")
    p.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True) instead of the default")
    p.add_argument("--no-guard", action="store_true", help="leave out the non-finite gradient check of train.py")
    p.add_argument("--variants", default=None, help=f"comma-separated training variants of the current code, "
                   f"measured side by side: {', '.join(VARIANTS)}")  # fmt: skip
    p.add_argument("--stages", default="2,3", help="cascades of the training section: 2, 3 or 2,3 (default)")
    p.add_argument("--sections", default=None, help="comma-separated subset of train,loss,load,eval (default: all)")
    p.add_argument("--rounds", type=int, default=1, help="run each training / loss worker this many times "
                   "(current and baseline alternating) and keep the median run")  # fmt: skip
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], json.loads(args.worker[1]))))
        return 0
    res = run_all(args)
    print_tables(res)
    write_json(args.out, res)
    return 0


def write_json(out: Path | None, res: dict) -> None:
    """Every figure as JSON at ``out`` (nothing when ``None``)."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

"""Joint recall of ``dftopk`` and of LCRON over each relaxed top-k operator on MovieLens-100K; one command.

Usage::

    python benchmarks/joint_recall_operators.py [--stages 2,3] [--repeats 1] [--work /tmp/jr-ops]
                                               [--out docs/results/operators] [--threads 1]

Runs ``cascade-ranking benchmark`` (this checkout's package) once per variant: the ``dftopk`` method with its
released defaults and with tau 1, LCRON with NeuralSort (its default), and LCRON with ``--set loss.operator=<op>
--set loss.tau=<tau>`` for every other operator (tau 1, in score units; not tuned). Each variant's benchmark
folder goes under ``--work`` (finished runs are reused, so ``--repeats 3`` later adds seeds 1 and 2); its
``results.json`` is copied to ``<out>/movielens-<K>stage/<variant>.json`` and one table of joint recall
(mean ± std over seeds) is printed and written to ``<out>/joint_recall.md`` (rows of earlier invocations
for other variants or stage counts are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: variant label -> (method, --set options)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "dftopk": ("dftopk", []),
    "dftopk (tau 1)": ("dftopk", ["loss.tau=1.0"]),
    "lcron (neuralsort)": ("lcron", []),
    **{
        f"lcron ({op})": ("lcron", [f"loss.operator={op}", "loss.tau=1.0"])
        for op in ("softsort", "dftopk", "lapsum", "sparse_topk")
    },
}


def run_variant(label: str, stages: int, args: argparse.Namespace) -> dict:
    method, sets = VARIANTS[label]
    slug = label.replace(" (", "-").replace(")", "").replace(" ", "")
    out = args.work / f"{stages}stage" / slug
    cmd = [sys.executable, "-m", "cascade_ranking", "-q", "benchmark", "--methods", method, "--stages", str(stages),
           "--repeats", str(args.repeats), "--out", str(out), "--threads", str(args.threads)]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} ({stages} stages) failed: {proc.stderr.strip().splitlines()[-3:]}")
    res = json.loads((out / "results.json").read_text())
    dest = args.out / f"movielens-{stages}stage" / f"{slug}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1))
    values = [r["joint_recall"] for r in res["runs"] if r["row"] == method]
    seconds = [r["train_seconds"] for r in res["runs"] if r["row"] == method]
    return {"variant": label, "stages": stages, "sets": sets, "joint_recall": values, "train_seconds": seconds}


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f} (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="2,3")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels of VARIANTS")
    p.add_argument("--work", type=Path, default=Path("/tmp/jr-ops"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "operators")
    args = p.parse_args(argv)
    rows = []
    for stages in [int(s) for s in args.stages.split(",")]:
        for label in args.variants.split(","):
            row = run_variant(label, stages, args)
            rows.append(row)
            print(f"{stages} stages  {label:22s} joint recall {_fmt(row['joint_recall'])}", flush=True)
    previous = args.out / "joint_recall.json"  # rows of earlier invocations (other variants or stages) are kept
    done = {(r["variant"], r["stages"]) for r in rows}
    if previous.is_file():
        rows = [r for r in json.loads(previous.read_text()) if (r["variant"], r["stages"]) not in done] + rows
    order = list(VARIANTS)
    rows.sort(key=lambda r: (r["stages"], order.index(r["variant"]) if r["variant"] in order else len(order)))
    lines = ["| variant | stages | joint recall (test) | train seconds |", "|---|---|---|---|"]
    for r in rows:
        secs = f"{statistics.mean(r['train_seconds']):.0f}" if r["train_seconds"] else "-"
        lines.append(f"| {r['variant']} | {r['stages']} | {_fmt(r['joint_recall'])} | {secs} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "joint_recall.md").write_text(table + "\n")
    (args.out / "joint_recall.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

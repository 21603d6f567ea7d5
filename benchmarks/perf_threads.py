"""Training throughput under each torch thread policy, with and without a competing busy process; one command.

Usage::

    python benchmarks/perf_threads.py [--rounds 3] [--steps 6] [--method lcron] [--stages 2] [--out FILE.json]

The training step of :mod:`perf_train` (pre-loaded batches of 1024, forward + loss + backward + guard + Adam)
runs in a fresh process for every (machine state, thread policy) pair. Machine states:

* ``as is``: no load added by this benchmark (the machine's load average is printed: a shared machine is
  never idle);
* ``contended``: one busy process (a pure Python loop) pinned to the last CPU this process may use, running
  for the whole of the state's runs (a laptop's browser tab, a neighbour's job on a shared server, CI).

Thread policies (``OMP_WAIT_POLICY`` unset unless stated):

* ``torch default``: torch's thread count, OpenMP workers spin while they wait (libgomp's default);
* ``1 thread``;
* ``passive wait``: ``OMP_WAIT_POLICY=PASSIVE`` (set before torch starts), torch's thread count;
* ``auto``: passive wait, and the thread count ``TrainConfig(threads="auto")`` measures;
* ``cascade-ranking default``: what the ``cascade-ranking`` command does with no ``--threads``
  (:mod:`cascade_ranking.training.threads`).

Every round runs every state and, within it, every policy in turn (side by side, interleaved); the table
shows the median over rounds of each worker's median step rate, and each policy's ratio to the best policy of
the same state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import REPO, spawn, write_json  # noqa: E402

#: label -> (worker environment changes (None = unset), spec additions)
POLICIES: dict[str, tuple[dict[str, str | None], dict]] = {
    "torch default": ({"OMP_WAIT_POLICY": None}, {}),
    "1 thread": ({"OMP_WAIT_POLICY": None}, {"threads": 1}),
    "passive wait": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "auto": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": "auto"}),
    "cascade-ranking default": ({"OMP_WAIT_POLICY": None}, {"thread_policy": "default"}),
}
STATES = ("as is", "contended")


class Competitor:
    """A busy Python loop pinned to one CPU while the ``with`` block runs (nothing when ``active`` is false)."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Competitor:
        if self.active:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(self.proc.pid, {max(os.sched_getaffinity(0))})
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def measure(args: argparse.Namespace) -> dict:
    from perf_machine import load_average, machine_info

    spec = {"method": args.method, "stages": args.stages, "mode": "preloaded", "steps": args.steps,
            "warmup": 1, "guard": True, "batch_size": 1024}  # fmt: skip
    runs: dict[tuple[str, str], list[dict]] = {}
    before = load_average()
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for state in STATES:
            with Competitor(state == "contended"):
                for label, (env, extra) in POLICIES.items():
                    out = spawn("train", {**spec, **extra, "label": label}, REPO / "src", env=env)
                    runs.setdefault((state, label), []).append(out)
                    rate = out.get("requests_per_second")
                    shown = f"{rate:,.0f} requests/s, {out.get('threads')} threads" if rate else out.get("error")
                    print(f"  round {r + 1} [{state}] {label}: {shown}", file=sys.stderr, flush=True)
    rows = []
    for (state, label), outs in runs.items():
        ok = [o for o in outs if "requests_per_second" in o]
        rows.append({
            "state": state, "policy": label,
            "requests_per_second": statistics.median(o["requests_per_second"] for o in ok) if ok else None,
            "rounds": [o.get("requests_per_second") for o in outs],
            "threads": sorted({o.get("threads") for o in ok}),
            "cpu_per_wall": statistics.median(o["cpu_per_wall"] for o in ok) if ok else None,
        })  # fmt: skip
    for state in STATES:
        best = max((r["requests_per_second"] or 0) for r in rows if r["state"] == state)
        for r in rows:
            if r["state"] == state and r["requests_per_second"]:
                r["of_best"] = r["requests_per_second"] / best
    return {
        "machine": machine_info(),
        "load_average_before": before,
        "load_average_after": load_average(),
        "config": {**spec, "rounds": args.rounds},
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


def print_table(res: dict) -> None:
    m, c = res["machine"], res["config"]
    print(f"\nMachine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable); torch {m['torch']}")
    print(f"Load average (1/5/15 min): before {res['load_average_before']}, after {res['load_average_after']}")
    print(f"{c['method']}, {c['stages']} stages, batch {c['batch_size']}, pre-loaded; median of {c['rounds']} "
          f"rounds (each the median of {c['steps']} steps)\n")  # fmt: skip
    print("| machine state | thread policy | torch threads | requests/s | of best (same state) | CPU / wall | rounds |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in res["rows"]:
        rate = f"{r['requests_per_second']:,.0f}" if r["requests_per_second"] else "ERROR"
        rounds = ", ".join(f"{x:,.0f}" if x else "-" for x in r["rounds"])
        print(f"| {r['state']} | {r['policy']} | {','.join(map(str, r['threads']))} | {rate} | "
              f"{100 * r.get('of_best', 0):.0f}% | {r['cpu_per_wall'] or 0:.2f} | {rounds} |")  # fmt: skip
    print(f"\nTotal {res['seconds']:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds over every state and policy (interleaved)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per worker (after one warm-up step)")
    p.add_argument("--method", default="lcron")
    p.add_argument("--stages", type=int, default=2, choices=(2, 3))
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = p.parse_args(argv)
    res = measure(args)
    print_table(res)
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

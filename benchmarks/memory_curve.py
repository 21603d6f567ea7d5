"""Bounded memory at any data size: resident memory across the days of a long streamed training run.

Usage::

    python benchmarks/memory_curve.py [--requests 2000000] [--days 20] [--data DIR] [--out DIR]
                                      [--method lcron] [--stages 2] [--threads N]

Simulates ``--requests`` RecFlow-shaped requests over ``--days`` days with the funnel simulator
(``cascade_ranking.datasets.synthetic.simulate``, store layout, last day = test; reused when ``--data`` already
holds them), then trains the cascade with ``cascade_ranking.training.loop.train`` exactly as ``cascade-ranking train``
does (one pass, batch 1024, Adam lr 0.01, checkpoint at every day boundary) and evaluates the test day.
A background thread samples the process's resident set size (``/proc/self/statm``) every 0.2 s; each training
step records the RSS too, so every sample is placed on its day.

Prints a table (per day: requests, steps, RSS at the day's end and the day's peak) and the growth from the end
of the second day to the end of the last training day (the first day includes the allocator's warm-up), and
writes ``memory_curve.json`` and ``memory_curve.png`` (RSS against requests trained, day boundaries marked)
into ``--out``. Memory is bounded when that growth is small against the total and does not scale with days.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from perf_train import current_rss_bytes, peak_rss_bytes  # noqa: E402

MB = 1 << 20


class Sampler:
    """Samples (seconds since start, RSS bytes) every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.perf_counter()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self.t0, current_rss_bytes() or 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ensure_data(data: Path, requests: int, days: int, stages: int) -> None:
    """Simulate the dataset into ``data`` unless a complete one of the same size is already there."""
    from cascade_ranking.data.schema import SCHEMA_FILE
    from cascade_ranking.data.store import open_dataset
    from cascade_ranking.datasets.synthetic import simulate

    if (data / SCHEMA_FILE).exists():
        schema = open_dataset(data)
        total = sum(p.num_requests for p in schema.partitions)
        if total == requests and len(schema.partitions) == days:
            logging.info("reusing %s (%d requests, %d days)", data, total, days)
            return
    t = time.perf_counter()
    simulate(data, requests=requests, days=days, stages=stages, layout="store", seed=0, progress=True)
    logging.info("simulated %d requests in %.0f s", requests, time.perf_counter() - t)


def run(args: argparse.Namespace) -> dict:
    from cascade_ranking.data.store import open_dataset
    from cascade_ranking.training.config import TrainConfig
    from cascade_ranking.training.loop import train

    data = Path(args.data)
    ensure_data(data, args.requests, args.days, args.stages)
    schema = open_dataset(data)
    parts = schema.partitions_with_role("train")
    bounds, steps = [], 0  # the last step of each training day
    for p in parts:
        steps += math.ceil(p.num_requests / args.batch_size)
        bounds.append(steps)

    config = TrainConfig(method=args.method, data=data, batch_size=args.batch_size, passes=1, threads=args.threads,
                         device="cpu", seed=0)  # fmt: skip
    step_rss: list[tuple[int, float, int]] = []  # (step, seconds, RSS)
    sampler = Sampler()
    start_rss = current_rss_bytes() or 0

    def on_step(step: int, total: int, loss: float) -> None:
        step_rss.append((step, time.perf_counter() - sampler.t0, current_rss_bytes() or 0))
        if step % 200 == 0 or step == total:
            logging.info("step %d/%d  loss %.4f  RSS %.0f MB", step, total, loss, step_rss[-1][2] / MB)

    with sampler:
        t = time.perf_counter()
        result = train(config, data=data, run_dir=Path(args.out) / "run", on_step=on_step, overwrite=True)
        wall = time.perf_counter() - t
        train_end = step_rss[-1][1] if step_rss else 0.0

    # place each background sample on a day: between the times of that day's first and last step
    step_time = {s: sec for s, sec, _ in step_rss}
    day_rows, prev_end_time, prev_step = [], 0.0, 0
    for p, last in zip(parts, bounds):
        end_time = step_time[last]
        in_day = [r for sec, r in sampler.samples if prev_end_time < sec <= end_time]
        in_day += [r for s, _, r in step_rss if prev_step < s <= last]
        day_rows.append({
            "day": p.name, "requests": p.num_requests, "steps": last - prev_step,
            "end_rss_mb": step_rss[last - 1][2] / MB, "peak_rss_mb": max(in_day) / MB,
        })  # fmt: skip
        prev_end_time, prev_step = end_time, last
    eval_samples = [r for sec, r in sampler.samples if sec > train_end]
    growth = day_rows[-1]["end_rss_mb"] - day_rows[min(1, len(day_rows) - 1)]["end_rss_mb"]
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            "method": args.method,
            "stages": args.stages,
            "requests": args.requests,
            "days": args.days,
            "batch_size": args.batch_size,
            "threads": result.metrics["threads"],
        },  # fmt: skip
        "start_rss_mb": start_rss / MB,
        "days": day_rows,
        "growth_day2_to_last_mb": growth,
        "eval_peak_rss_mb": max(eval_samples) / MB if eval_samples else None,
        "process_peak_rss_mb": peak_rss_bytes() / MB,
        "train_requests_per_second": result.metrics["train_requests_per_second"],
        "train_seconds": result.metrics["train_seconds"],
        "wall_seconds": wall,
        "test_joint_recall": result.metrics.get("test", {}).get("joint_recall"),
        "samples": [(round(sec, 2), round(r / MB, 1)) for sec, r in sampler.samples],
        "step_rss": [(s, round(sec, 2), round(r / MB, 1)) for s, sec, r in step_rss],
        "day_end_steps": bounds,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = report["config"]["batch_size"]
    steps = [s for s, _, _ in report["step_rss"]]
    rss = [r for _, _, r in report["step_rss"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([s * bs / 1e6 for s in steps], rss, lw=1)
    for b in report["day_end_steps"]:
        ax.axvline(b * bs / 1e6, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("requests trained (millions); dotted lines = day boundaries")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(0, max(rss) * 1.15)
    c = report["config"]
    ax.set_title(f"{c['method']}, {c['stages']} stages, {c['requests']:,} simulated requests over {c['days']} days")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--stages", type=int, default=2, choices=(2, 3))
    parser.add_argument("--method", default="lcron")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None, help="dataset folder (default: a cache folder named by size)")
    parser.add_argument("--out", default="benchmarks/out/memory-curve")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.data is None:
        from cascade_ranking.data.cache import cache_dir

        args.data = str(cache_dir() / f"synthetic-{args.stages}stage-{args.requests}-{args.days}d")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    tmp = out / "memory_curve.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out / "memory_curve.json")
    plot(report, out / "memory_curve.png")

    print(f"\n{report['config']}  threads={report['config']['threads']}")
    print("| day | requests | steps | RSS at end (MB) | peak RSS in day (MB) |")
    print("|---|---:|---:|---:|---:|")
    for d in report["days"]:
        print(f"| {d['day']} | {d['requests']:,} | {d['steps']} | {d['end_rss_mb']:.0f} | {d['peak_rss_mb']:.0f} |")
    print(f"\nRSS growth, end of day 2 -> end of last training day: {report['growth_day2_to_last_mb']:+.1f} MB")
    peaks = f"evaluation peak RSS: {report['eval_peak_rss_mb']:.0f} MB"
    print(f"{peaks}; process peak {report['process_peak_rss_mb']:.0f} MB")
    print(f"training: {report['train_requests_per_second']:.0f} requests/s over {report['train_seconds']:.0f} s; "
          f"test joint recall {report['test_joint_recall']}")  # fmt: skip
    print(f"wrote {out / 'memory_curve.json'} and {out / 'memory_curve.png'}")


if __name__ == "__main__":
    main()

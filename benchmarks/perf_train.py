"""Training-step throughput of one configuration (run inside a fresh worker process).

One step is what ``cascade_ranking.training.loop`` does per batch: the cascade scores every candidate with every stage,
the loss, ``zero_grad`` + backward, the non-finite guard (loss and gradient norms, one reduction) and an Adam
step (lr 0.01) over the stage models and the loss's learnable weights.

Two data modes:

* ``preloaded``: batches built in memory before timing; the figure is ``batch_size / median step time``, with
  the median time of each part of the step (forward, loss, backward, guard, optimizer);
* ``stream``: batches streamed from the Parquet store by ``data.loader.iterate_partition`` (partition read,
  request and candidate shuffles, per-batch tensors) inside the timed loop; the figure is the median over
  partitions of ``requests in the partition / seconds for the whole partition`` (read + every step).
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

#: side of the square matmul timed after every step (the FLOP/s reference measured under the same load)
MM_SIZE = 2048
STAGE_MODELS = {2: ["dssm", "din"], 3: ["dssm", "mlp", "din"]}
STAGE_NAMES = {2: ["retrieval", "prerank"], 3: ["retrieval", "prerank", "rank"]}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if peak > 1 << 32 else int(peak) * 1024


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return None


class RssSampler:
    """Highest resident set size seen while the ``with`` block runs (polled every ``interval`` seconds)."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = current_rss_bytes() or 0
        self.peak = self.start
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes() or 0)

    @property
    def extra(self) -> int:
        return self.peak - self.start


def build(schema, method: str, *, lr: float = 0.01, fused_adam: bool = False, hyper: dict | None = None):
    """The cascade (DSSM + DIN, or DSSM + MLP + DIN), the loss of ``method`` and its Adam optimizer."""
    from cascade_ranking import losses
    from cascade_ranking.cascade import Cascade, Stage
    from cascade_ranking.models import build_model

    k = len(schema.keep)
    cascade = Cascade(
        [
            Stage(name, build_model(model, schema, emb_dim=8, hidden=128), keep)
            for name, model, keep in zip(STAGE_NAMES[k], STAGE_MODELS[k], schema.keep)
        ]
    )
    loss_fn = losses.build(method, keep=schema.keep, gt_num=schema.gt_num, **(hyper or {}))
    params = list(cascade.parameters()) + list(loss_fn.parameters())
    try:  # the optimizer training builds (fused Adam where supported); older sources: torch's default Adam
        from cascade_ranking.training.optim import adam

        optimizer = adam(params, lr, fused=True if fused_adam else None)
    except ImportError:
        optimizer = torch.optim.Adam(params, lr=lr, **({"fused": True} if fused_adam else {}))
    return cascade, loss_fn, params, optimizer


class Stepper:
    """One training step, timed by part."""

    PARTS = ("forward", "loss", "backward", "guard", "optimizer")

    def __init__(self, cascade, loss_fn, params, optimizer, *, guard: bool = True) -> None:
        self.cascade, self.loss_fn, self.params, self.optimizer = cascade, loss_fn, params, optimizer
        self.guard = guard
        self.times: dict[str, list[float]] = {p: [] for p in self.PARTS}
        self.cpu: list[float] = []

    def __call__(self, batch, record: bool = True) -> float:
        c0 = time.process_time()
        t0 = time.perf_counter()
        logits = self.cascade(batch)
        t1 = time.perf_counter()
        out = self.loss_fn(logits, label=batch.label, mask=batch.mask, stage=batch.stage, soft_label=batch.soft_label)
        t2 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        t3 = time.perf_counter()
        loss = float(out.loss.detach())
        if self.guard:  # as train.py: a finite loss and finite gradient norms
            norms = [p.grad.detach().norm() for p in self.params if p.grad is not None]
            if not (np.isfinite(loss) and bool(torch.isfinite(torch.stack(norms).sum()))):
                raise FloatingPointError(f"non-finite loss or gradient ({loss})")
        t4 = time.perf_counter()
        self.optimizer.step()
        t5 = time.perf_counter()
        if record:
            for name, dt in zip(self.PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                self.times[name].append(dt)
            self.cpu.append(time.process_time() - c0)
        return t5 - t0


def auto_threads(step: Stepper, batch) -> dict:
    """``threads="auto"`` as training does it: time the forward and backward pass of one batch at each
    candidate thread count (:func:`cascade_ranking.training.threads.choose_threads`) and keep the fastest."""
    from cascade_ranking.training.threads import auto_candidates, choose_threads

    def probe() -> None:
        logits = step.cascade(batch)
        step.loss_fn(
            logits, label=batch.label, mask=batch.mask, stage=batch.stage, soft_label=batch.soft_label
        ).loss.backward()
        step.optimizer.zero_grad(set_to_none=True)

    t = time.perf_counter()
    best, medians = choose_threads(probe, auto_candidates())
    return {"threads": best, "auto_seconds": time.perf_counter() - t, "auto_medians": medians}


def run_training(spec: dict) -> dict:
    """Measure one configuration. ``spec``: method, stages, mode, data (stream), steps, warmup, batch_size,
    fused_adam, guard, seed."""
    from perf_data import Vocab, perf_schema, random_batches

    import cascade_ranking

    torch.manual_seed(spec.get("seed", 0))
    batch_size = spec.get("batch_size", 1024)
    rss_start = current_rss_bytes()
    result = {
        "package": str(Path(cascade_ranking.__file__).parent),
        "threads": torch.get_num_threads(),
        **{k: spec[k] for k in ("method", "stages", "mode", "label")},
    }
    if spec["mode"] == "preloaded":
        vocab = Vocab(**spec["vocab"]) if spec.get("vocab") else Vocab()
        schema = perf_schema(spec["stages"], vocab, candidates=spec.get("candidates"))
        batches = random_batches(schema, batch_size, spec["warmup"] + spec["steps"], seed=spec.get("seed", 0))
        built = build(schema, spec["method"], fused_adam=spec.get("fused_adam", False), hyper=spec.get("hyper"))
        step = Stepper(*built, guard=spec["guard"])
        if spec.get("threads") == "auto":
            result.update(auto_threads(step, batches[0]))
        for b in batches[: spec["warmup"]]:
            step(b, record=False)
        totals, mm_seconds = [], []
        a = torch.randn(MM_SIZE, MM_SIZE)
        for b in batches[spec["warmup"] :]:
            totals.append(step(b))
            if spec.get("interleaved_matmul", True):  # the machine's matmul rate under the same load
                t = time.perf_counter()
                torch.mm(a, a)
                mm_seconds.append(time.perf_counter() - t)
        if mm_seconds:
            result["interleaved_matmul_gflops"] = 2 * MM_SIZE**3 / statistics.median(mm_seconds) / 1e9
        med = statistics.median(totals)
        cpu = statistics.median(step.cpu)
        result.update(
            candidates=schema.num_candidates,
            batch_size=batch_size,
            candidates_per_second=batch_size * schema.num_candidates / med,
            requests_per_second=batch_size / med,
            step_seconds=med,
            step_seconds_all=totals,
            step_cpu_seconds=cpu,
            cpu_per_wall=cpu / med,
            parts_seconds={k: statistics.median(v) for k, v in step.times.items()},
        )
    else:
        from cascade_ranking.data.loader import iterate_partition
        from cascade_ranking.data.store import open_dataset

        data = Path(spec["data"])
        schema = open_dataset(data)
        step = Stepper(*build(schema, spec["method"], fused_adam=spec.get("fused_adam", False)), guard=spec["guard"])
        rng = np.random.default_rng(spec.get("seed", 0))
        parts = schema.partitions
        # warm-up on the first partition's first batches (not timed), then one timed pass over the others
        for i, b in enumerate(iterate_partition(data, schema, parts[0], batch_size=batch_size, shuffle=True, rng=rng)):
            if i >= spec["warmup"]:
                break
            step(b, record=False)
        rates, seconds, requests, cpu = [], 0.0, 0, 0.0
        for part in parts[1:]:
            c = time.process_time()
            t = time.perf_counter()
            n = 0
            for b in iterate_partition(data, schema, part, batch_size=batch_size, shuffle=True, rng=rng):
                step(b)
                n += b.batch_size
            dt = time.perf_counter() - t
            rates.append(n / dt)
            seconds += dt
            requests += n
            cpu += time.process_time() - c
        result.update(
            requests_per_second=statistics.median(rates),
            requests_per_second_all=rates,
            mean_requests_per_second=requests / seconds,
            cpu_per_wall=cpu / seconds,
            parts_seconds={k: statistics.median(v) for k, v in step.times.items()},
        )
    result.update(
        parameters=sum(p.numel() for p in step.params),
        peak_rss_bytes=peak_rss_bytes(),
        rss_start_bytes=rss_start,
    )
    return result

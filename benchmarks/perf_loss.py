"""Loss-only cost as the list grows: forward + backward of a sorting-based loss alone (fresh worker process).

At a fixed budget ``B * N`` (requests x candidates), an ``O(B N^2)`` loss costs time and memory proportional to
``N``, so ``seconds / (B N^2)`` and ``extra memory / (B N^2)`` stay flat as ``N`` grows; an ``N^3`` intermediate
would make them grow like ``N``. Inputs: every candidate valid, labels laid out like RecFlow (a top group of
``gt_num`` distinct grades, then constant-label groups), logits standard normal, two stages (keep 30, 20).
"""

from __future__ import annotations

import statistics
import time

import torch
from perf_train import RssSampler, peak_rss_bytes


def loss_inputs(batch: int, num: int, stages: int, seed: int = 0, gt_num: int = 10):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(batch, num, generator=g, requires_grad=True) for _ in range(stages)]
    groups = stages + 2
    position = (torch.arange(num) * groups // num).flip(0)  # best group first, as RecFlow
    label = position.float().expand(batch, num).clone()
    top = torch.argsort(torch.rand(batch, gt_num, generator=g), dim=1).float()
    label[:, :gt_num] = 30.0 - top
    stage = position.expand(batch, num).clone()
    stage[:, :gt_num] = groups - 1
    mask = torch.ones(batch, num, dtype=torch.bool)
    return logits, label, mask, stage


def run_loss(spec: dict) -> dict:
    """``spec``: method, num (N), batch (B), stages, repeats."""
    from cascade_ranking import losses

    num, batch, stages = spec["num"], spec["batch"], spec.get("stages", 2)
    keep = [min(num, 10 * (stages + 1 - i)) for i in range(stages)]
    loss_fn = losses.build(spec["method"], keep=keep, gt_num=10, **spec.get("hyper", {}))
    logits, label, mask, stage = loss_inputs(batch, num, stages)
    times, extra = [], 0
    for r in range(spec.get("repeats", 3) + 1):
        for x in logits:
            x.grad = None
        with RssSampler() as rss:
            t = time.perf_counter()
            out = loss_fn(logits, label=label, mask=mask, stage=stage)
            out.loss.backward()
            dt = time.perf_counter() - t
            del out
        extra = max(extra, rss.extra)
        if r:  # the first run warms up
            times.append(dt)
    med = statistics.median(times)
    cells = batch * num * num
    return {
        "method": spec["method"],
        "num": num,
        "batch": batch,
        "stages": stages,
        "label": spec.get("label", "current"),
        "seconds": med,
        "seconds_all": times,
        "ns_per_cell": med / cells * 1e9,
        "requests_per_second": batch / med,
        "peak_rss_bytes": peak_rss_bytes(),
        "extra_peak_bytes": extra,
        "extra_bytes_per_cell": extra / cells,
        "threads": torch.get_num_threads(),
    }

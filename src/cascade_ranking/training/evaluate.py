"""Evaluation of a cascade (or of reference scorers) over whole partitions, never dropping a request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..cascade import Cascade
from ..data.loader import iterate_partitions
from ..data.schema import DatasetSchema, Partition
from ..data.store import read_partition
from ..metrics import CascadeMetrics
from ..types import RequestBatch
from .build import Resolved
from .config import TrainConfig

__all__ = ["PopularityScorer", "RandomScorer", "Scorer", "evaluate", "evaluate_cascade"]

log = logging.getLogger(__name__)

Scorer = Callable[[RequestBatch], Sequence[torch.Tensor]]


@torch.no_grad()
def evaluate(
    score: Scorer,
    directory: str | Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    *,
    stage_names: Sequence[str],
    keep: Sequence[int],
    gt_num: int,
    batch_size: int = 4096,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, float]:
    """Score every request of ``partitions`` and return the cascade metrics (see ``metrics.CascadeMetrics``).

    Args:
        score: maps a batch to one ``[B, N]`` score tensor per stage (e.g. a ``Cascade``).
        directory, schema, partitions: the data to evaluate (in order; all requests are used).
        stage_names, keep, gt_num: the cascade's stages, keep sizes and ground-truth size.
        batch_size: requests per batch (the last, partial batch is evaluated too).
        seed: seeds the candidate-slot shuffle, which is what breaks score ties (no slot order is favoured).
        device: where to score.
        on_batch: called with the number of requests of each finished batch (progress display).
        shard: ``(rank, world_size)``: score rows ``rank::world`` of every batch and sum the metric statistics
            over the ranks of ``torch.distributed`` (every rank gets the metrics of all requests).

    Raises:
        ValueError: ``partitions`` hold no request (names the folder and the partitions).
    """
    if not sum(p.num_requests for p in partitions):
        names = [p.name for p in partitions]
        raise ValueError(f"{directory}: the partitions {names} hold no request to evaluate (metrics would be NaN)")
    metrics = CascadeMetrics(list(stage_names), list(keep), gt_num)
    rng = np.random.default_rng(seed)
    rank, world = shard
    for batch in iterate_partitions(directory, schema, partitions, batch_size=batch_size, shuffle=False, rng=rng):
        if world > 1:
            batch = batch.select(slice(rank, None, world))
        batch = batch.to(device)
        logits = [x.float() for x in score(batch)]
        metrics.update(logits, batch.label, batch.mask)
        if on_batch is not None:
            on_batch(batch.batch_size * world)
    if world > 1:
        metrics.all_reduce(device=device if torch.device(device).type == "cuda" else None)
    return metrics.compute()


def evaluate_cascade(
    cascade: Cascade,
    config: TrainConfig,
    data: Path,
    schema: DatasetSchema,
    role: str,
    *,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, float]:
    """Metrics of ``cascade`` on the partitions with ``role`` (``"test"`` or ``"valid"``), as configured.

    Raises:
        ValueError: the dataset has no partition with that role, or they hold no request.
    """
    run = Resolved.of(config)
    parts = schema.partitions_with_role(role)  # type: ignore[arg-type]
    if not parts:
        raise ValueError(f"{data}: no partition with role {role!r}")
    if not sum(p.num_requests for p in parts):
        raise ValueError(f"{data}: the {role} partitions {[p.name for p in parts]} hold no request to evaluate")
    return evaluate(
        cascade.to(device).eval(), data, schema, parts, stage_names=[s.name for s in cascade.stages],
        keep=run.keep, gt_num=run.gt_num, batch_size=config.eval_batch_size, seed=config.seed,
        device=device, on_batch=on_batch, shard=shard,
    )  # fmt: skip


class RandomScorer(torch.nn.Module):
    """Reference scorer: i.i.d. uniform scores (the same random scores at every stage). Joint recall ~ keep[-1]/N."""

    def __init__(self, num_stages: int, seed: int = 0) -> None:
        super().__init__()
        self.num_stages = num_stages
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, batch: RequestBatch) -> list[torch.Tensor]:
        """``num_stages`` references to one ``[B, N]`` float32 tensor of uniform scores."""
        s = torch.rand(batch.mask.shape, generator=self.generator).to(batch.device)
        return [s] * self.num_stages


class PopularityScorer(torch.nn.Module):
    """Reference scorer: an item's number of top-funnel-position appearances in the training partitions.

    "Popularity" counts how often the item was in the top funnel group (for MovieLens-100K: rated; for
    RecFlow: ranked positive) over the training partitions only. The item is identified by the schema's
    first item field. The same scores are used at every stage.
    """

    counts: torch.Tensor  # buffer [V] float32: appearances per item id

    def __init__(self, counts: torch.Tensor, item_field: str, num_stages: int) -> None:
        super().__init__()
        self.register_buffer("counts", counts.float())
        self.item_field = item_field
        self.num_stages = num_stages

    @classmethod
    def fit(cls, directory: str | Path, schema: DatasetSchema, num_stages: int) -> PopularityScorer:
        item = schema.fields_with_role("item")[0]
        counts = np.zeros(item.vocab_size, dtype=np.float64)
        top = len(schema.funnel_positions) - 1
        for partition in schema.partitions_with_role("train"):
            arrays = read_partition(directory, schema, partition)
            ids = arrays[f"item.{item.name}"][(arrays["stage"] == top) & arrays["mask"]]
            counts += np.bincount(ids, minlength=item.vocab_size)
        return cls(torch.from_numpy(counts), item.name, num_stages)

    def forward(self, batch: RequestBatch) -> list[torch.Tensor]:
        """``num_stages`` references to one ``[B, N]`` float32 tensor: each candidate item's count."""
        s = self.counts[batch.item[self.item_field]]
        return [s] * self.num_stages

"""The benchmark's configuration: every training option plus which methods, how many seeds, where."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..training.config import TrainConfig

__all__ = ["BenchmarkConfig"]


class BenchmarkConfig(TrainConfig):
    """A benchmark: every field of :class:`TrainConfig` (shared by all runs) plus which methods, how many seeds.

    Attributes:
        task: ``"cascade"`` (the LCRON paper's comparison of cascade methods) or ``"prerank"`` (the RankTower
            paper's comparison of pre-ranking models on full-stage samples: :mod:`.prerank`).
        methods: methods to compare (``None`` = the LCRON paper's eight cascade methods and DFTopK); for
            ``task="prerank"`` the Table 1 rows (``lr``, ``two_tower``, ``cold``, ``din``, ``arf``, ``ranktower``).
        repeats: seeds per method (0 .. repeats-1).
        out: output folder (``None`` = ``benchmark-<K>stage``, ``benchmark-prerank`` or
            ``benchmark-<dataset folder>``).
        ablations: with ``task="prerank"``, also run the RankTower paper's ablations (Tables 2-4).
        protocol: with ``task="prerank"`` and the default data: ``"paper"`` (RankTower's protocol, Sec. 5.1:
            negative impressions, user filter, a random 70/10/20 split per user, K = 100 per user's list, Adam lr
            0.001, batch 64) or ``"time"`` (every rating a positive impression, weekly time split).
        tune: with ``task="prerank"``: search every Table 1 row's grid on validation first, the same budget for
            each (:mod:`.prerank_tuning`); ``None`` (default) = on under the paper protocol.
    """

    task: Literal["cascade", "prerank"] = "cascade"
    methods: list[str] | None = None
    repeats: int = Field(default=3, gt=0)
    out: Path | None = None
    ablations: bool = False
    protocol: Literal["paper", "time"] = "paper"
    tune: bool | None = None

    def train_config(self, **updates: Any) -> TrainConfig:
        """The :class:`TrainConfig` shared by the benchmark's runs (its own fields dropped), with ``updates``."""
        own = set(type(self).model_fields) - set(TrainConfig.model_fields)
        return TrainConfig.model_validate({**self.model_dump(exclude=own), **updates})

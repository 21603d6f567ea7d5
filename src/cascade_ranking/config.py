"""Typed run configuration (pydantic v2); the resolved copy is saved in every run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Stage names by position, retrieval first (a cascade of K stages uses the first K... see ``stage_names``).
STAGE_NAMES = {1: ["retrieval"], 2: ["retrieval", "prerank"], 3: ["retrieval", "prerank", "rank"]}

#: Default stage models by number of stages (LCRON experiments: DSSM retrieval, DIN last stage).
DEFAULT_MODELS = {1: ["dssm"], 2: ["dssm", "din"], 3: ["dssm", "mlp", "din"]}


def stage_names(num_stages: int) -> list[str]:
    """``["retrieval", "prerank", "rank"]`` for 3 stages; ``stage_<i>`` names beyond 3 stages."""
    if num_stages in STAGE_NAMES:
        return list(STAGE_NAMES[num_stages])
    return ["retrieval"] + [f"stage_{i}" for i in range(1, num_stages - 1)] + ["rank"]


class TrainConfig(BaseModel):
    """Everything that defines a training run. ``None`` means "take the dataset's default".

    Attributes:
        method: a cascade method registered in ``cascade_ranking.losses`` (e.g. ``"lcron"``).
        data: dataset directory in the store format; ``None`` = the prepared MovieLens-100K copy for
            ``stages`` (prepared on first use).
        stages: number of cascade stages when ``data`` is ``None`` (2 or 3); otherwise taken from the data.
        models: stage model names, retrieval first (default DSSM ... DIN).
        keep: candidates each stage keeps (default: the dataset's).
        gt_num: ground-truth size (default: the dataset's).
        emb_dim, hidden: embedding dimension and hidden units (LCRON experiments: 8 and 128).
        batch_size, passes: training batch size and passes over the training partitions (default: the
            dataset's own; RecFlow: 1024 and 1).
        lr: Adam learning rate over the models and the loss's learnable weights (0.01, as in the paper).
        seed: seeds torch, the loader's shuffles and the evaluation's tie-breaking.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        eval_batch_size: requests per evaluation batch (evaluation never drops a request).
        loss: method hyper-parameters passed to ``losses.build`` (e.g. ``{"tau": 50}``).
        threads: torch intra-op threads (``None`` = torch's default).
        checkpoint_every: also checkpoint every this many steps (always at partition boundaries).
        skip_nonfinite: skip (and count) a step whose loss or gradient is NaN/inf instead of stopping.
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "lcron"
    data: Path | None = None
    stages: Literal[2, 3] = 2
    models: list[str] | None = None
    keep: list[int] | None = None
    gt_num: int | None = Field(default=None, gt=0)
    emb_dim: int = Field(default=8, gt=0)
    hidden: int = Field(default=128, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    passes: int | None = Field(default=None, gt=0)
    lr: float = Field(default=0.01, gt=0)
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = Field(default=4096, gt=0)
    loss: dict[str, Any] = {}
    threads: int | None = Field(default=None, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    skip_nonfinite: bool = False

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from . import losses

        if v not in losses.REGISTRY:
            raise ValueError(f"unknown method {v!r}; known methods: {', '.join(losses.REGISTRY)}")
        return v

"""The streaming training protocol (RecFlow protocol; Wang et al. ICML 2025, Sec. 4.1).

Train the whole cascade jointly on the training partitions in time order (shuffled within a partition),
Adam with lr 0.01 over the stage models *and* the loss's learnable weights, then evaluate on the test
partition (and report the validation partition too). RecFlow uses one pass at batch 1024; a dataset may
carry its own defaults (``schema.train_defaults``): MovieLens-100K has only ~7k training requests.

A run folder holds ``config.json`` (the resolved config), ``metrics.json`` (seed, versions, timings, loss
curve summary, validation and test metrics) and ``checkpoint.pt`` (model, loss and optimizer states).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__, losses
from .cascade import Cascade, Stage
from .config import DEFAULT_MODELS, TrainConfig, stage_names
from .data.loader import iterate_partition
from .data.schema import DatasetSchema, validate_keep
from .data.store import atomic_path, open_dataset, write_text_atomic
from .evaluate import evaluate
from .models import build_model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step, method and batch."""


@dataclass
class RunResult:
    run_dir: Path
    config: TrainConfig
    metrics: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def resolve_config(config: TrainConfig, schema: DatasetSchema, data: Path) -> TrainConfig:
    """Fill every ``None`` of ``config`` from the dataset; validate keep sizes and stage models against it."""
    keep = list(config.keep) if config.keep is not None else list(schema.keep)
    gt_num = config.gt_num if config.gt_num is not None else schema.gt_num
    validate_keep(
        keep, gt_num, schema.num_candidates, what=f"keep (dataset {data} has N={schema.num_candidates})"
    )
    models = list(config.models) if config.models is not None else DEFAULT_MODELS.get(len(keep))
    if models is None or len(models) != len(keep):
        raise ValueError(f"models={models}: give one stage model per keep size (keep={keep})")
    return config.model_copy(
        update=dict(
            data=data,
            stages=len(keep) if len(keep) in (2, 3) else config.stages,
            keep=keep,
            gt_num=gt_num,
            models=models,
            batch_size=config.batch_size or schema.train_defaults.batch_size,
            passes=config.passes or schema.train_defaults.passes,
        )
    )


def build_cascade(config: TrainConfig, schema: DatasetSchema) -> Cascade:
    """The cascade of ``config.models`` with ``config.keep``, built from the dataset's feature spec."""
    names = stage_names(len(config.keep))
    return Cascade(
        [
            Stage(name, build_model(model, schema, emb_dim=config.emb_dim, hidden=config.hidden), keep)
            for name, model, keep in zip(names, config.models, config.keep)
        ]
    )


def package_versions() -> dict[str, str]:
    import pyarrow

    return {
        "cascade_ranking": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def default_run_dir(method: str, num_stages: int, seed: int, root: Path = Path("runs")) -> Path:
    """``runs/<method>-<K>stage-seed<seed>-<UTC time>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{method}-{num_stages}stage-seed{seed}-{stamp}"


def train(
    config: TrainConfig,
    *,
    data: Path,
    run_dir: Path,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int], None] | None = None,
) -> RunResult:
    """Train a cascade with ``config`` on the dataset at ``data``; write the run folder; return the metrics.

    Args:
        config: the run configuration (``None`` fields are resolved from the dataset).
        data: dataset directory (store format).
        run_dir: output folder (created; existing files of a previous run are overwritten atomically).
        on_step: progress callback ``(step, total_steps, loss)``.
        on_eval: progress callback with the number of requests of each evaluated batch.

    Raises:
        SchemaError / StoreError: the dataset is missing or malformed.
        ValueError: the configuration does not fit the dataset (keep sizes, models, unknown method).
        TrainingError: a non-finite loss or gradient (names the step, method and batch).
    """
    schema = open_dataset(data)
    config = resolve_config(config, schema, Path(data))
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    cascade = build_cascade(config, schema).to(device)
    loss_fn = losses.build(config.method, keep=config.keep, gt_num=config.gt_num, **config.loss).to(device)
    params = list(cascade.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)

    train_parts = schema.partitions_with_role("train")
    if not train_parts:
        raise ValueError(f"{data}: the dataset has no partition with role 'train'")
    steps_per_pass = sum(math.ceil(p.num_requests / config.batch_size) for p in train_parts)
    total_steps = steps_per_pass * config.passes
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    log.info(
        "training %s on %s: %d stages %s, keep %s, %d steps",
        config.method,
        data,
        len(config.keep),
        config.models,
        config.keep,
        total_steps,
    )

    step = 0
    loss_curve: list[float] = []
    requests_seen = 0
    cascade.train()
    t0 = time.perf_counter()
    for _ in range(config.passes):
        for partition in train_parts:
            batches = iterate_partition(
                data, schema, partition, batch_size=config.batch_size, shuffle=True, rng=rng
            )
            for batch in batches:
                batch = batch.to(device)
                extra = {"soft_label": batch.soft_label} if getattr(loss_fn, "needs_soft_label", False) else {}
                out = loss_fn(cascade(batch), label=batch.label, mask=batch.mask, stage=batch.stage, **extra)
                if not torch.isfinite(out.loss):
                    raise TrainingError(
                        f"non-finite loss {out.loss.item()} at step {step} (method {config.method}, "
                        f"partition {partition.name}, requests {batch.request_id[:3].tolist()}...)"
                    )
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                step += 1
                requests_seen += batch.batch_size
                loss_value = float(out.loss.detach())
                loss_curve.append(loss_value)
                if on_step is not None:
                    on_step(step, total_steps, loss_value)
    train_seconds = time.perf_counter() - t0

    cascade.eval()
    evaluation = {}
    t1 = time.perf_counter()
    for role in ("valid", "test"):
        parts = schema.partitions_with_role(role)
        if parts:
            evaluation[role] = evaluate(
                cascade,
                data,
                schema,
                parts,
                stage_names=[s.name for s in cascade.stages],
                keep=config.keep,
                gt_num=config.gt_num,
                batch_size=config.eval_batch_size,
                seed=config.seed,
                device=device,
                on_batch=on_eval,
            )
    eval_seconds = time.perf_counter() - t1

    loss_parts = {k: float(v) for k, v in out.parts.items()} if step else {}
    metrics = {
        "method": config.method,
        "seed": config.seed,
        "dataset": schema.name,
        "data": str(data),
        "stages": [s.name for s in cascade.stages],
        "steps": step,
        "train_requests": requests_seen,
        "train_seconds": train_seconds,
        "train_requests_per_second": requests_seen / max(train_seconds, 1e-9),
        "eval_seconds": eval_seconds,
        "final_loss": loss_curve[-1] if loss_curve else None,
        "final_loss_parts": loss_parts,
        "loss_curve_every_10_steps": loss_curve[::10],
        "versions": package_versions(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        **evaluation,
    }
    save_checkpoint(run_dir, cascade, loss_fn, optimizer, step)
    write_text_atomic(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return RunResult(run_dir=run_dir, config=config, metrics=metrics)


def save_checkpoint(run_dir: Path, cascade: Cascade, loss_fn: torch.nn.Module, optimizer, step: int) -> None:
    state = {
        "cascade": cascade.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
    }
    with atomic_path(run_dir / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def load_run(run_dir: Path, *, data: Path | None = None) -> tuple[TrainConfig, DatasetSchema, Path, Cascade]:
    """Rebuild a saved run's cascade (weights loaded) and its dataset. ``data`` overrides the saved path.

    Raises:
        FileNotFoundError: ``run_dir`` lacks config.json or checkpoint.pt (names the file).
    """
    for name in (CONFIG_FILE, CHECKPOINT_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name}: missing; is {run_dir} a run folder written by `train`?"
            )
    config = TrainConfig.model_validate_json((run_dir / CONFIG_FILE).read_text())
    data = Path(data) if data is not None else config.data
    schema = open_dataset(data)
    cascade = build_cascade(config, schema)
    state = torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    cascade.load_state_dict(state["cascade"])
    return config, schema, data, cascade

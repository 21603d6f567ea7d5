"""The streaming training protocol (RecFlow protocol; Wang et al. ICML 2025, Sec. 4.1).

Train the whole cascade jointly on the training partitions in time order (shuffled within a partition),
Adam with lr 0.01 over the stage models *and* the loss's learnable weights, then evaluate on the test
partition (and report the validation partition too). RecFlow uses one pass at batch 1024; a dataset may
carry its own defaults (``schema.train_defaults``): MovieLens-100K has only ~7k training requests.

A run folder holds ``config.json`` (the resolved config), ``metrics.json`` (seed, versions, timings, loss
curve summary, validation and test metrics) and ``checkpoint.pt`` (model, loss and optimizer states). With
``config.tensorboard`` set, the loss, its parts, the loss's learnable parameters, the learning rate and the
throughput are also logged to TensorBoard every step (:mod:`cascade_ranking.tracking`).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from .losses.base import LossOutput
from .models import build_model
from .models.auxiliary import add_auxiliary_losses
from .tracking import TensorBoardLogger, metric_scalars, step_scalars

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "LOSS_CURVE_EVERY",
    "METRICS_FILE",
    "LossCurve",
    "Resolved",
    "RunResult",
    "StreamPosition",
    "TrainingError",
    "build_cascade",
    "default_run_dir",
    "evaluate_cascade",
    "load_config",
    "load_run",
    "package_versions",
    "resolve_config",
    "resolve_device",
    "save_checkpoint",
    "train",
    "with_prerank_model",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"

#: ``metrics.json`` keeps the loss of every this-many-th optimizer step (``loss_curve_every_10_steps``).
LOSS_CURVE_EVERY = 10


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step, method and batch."""


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the resolved config and the metrics (as in metrics.json)."""

    run_dir: Path
    config: TrainConfig
    metrics: dict


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as a device.

    Raises:
        ValueError: not a device name, or CUDA requested where it is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:N): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def resolve_config(config: TrainConfig, schema: DatasetSchema, data: Path) -> TrainConfig:
    """Fill every ``None`` of ``config`` from the dataset; validate keep sizes and stage models against it."""
    keep = list(config.keep) if config.keep is not None else list(schema.keep)
    gt_num = config.gt_num if config.gt_num is not None else schema.gt_num
    validate_keep(keep, gt_num, schema.num_candidates, what=f"keep (dataset {data} has N={schema.num_candidates})")
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


@dataclass(frozen=True)
class Resolved:
    """The fields of a :class:`TrainConfig` that :func:`resolve_config` fills from the dataset, typed as set."""

    keep: list[int]
    gt_num: int
    models: list[str]
    batch_size: int
    passes: int

    @classmethod
    def of(cls, config: TrainConfig) -> Resolved:
        """Raises ``ValueError`` when ``config`` was not resolved (a field is still ``None``)."""
        keep, gt_num, models, batch, passes = (
            config.keep,
            config.gt_num,
            config.models,
            config.batch_size,
            config.passes,
        )
        if keep is None or gt_num is None or models is None or batch is None or passes is None:
            raise ValueError(
                "configuration not resolved against a dataset (keep, gt_num, models, batch_size or passes unset); "
                "call resolve_config first"
            )
        return cls(keep=list(keep), gt_num=gt_num, models=list(models), batch_size=batch, passes=passes)


def with_prerank_model(config: TrainConfig, schema: DatasetSchema, model: str) -> TrainConfig:
    """``config`` with the pre-ranking (second) stage's model replaced, e.g. RankTower in DIN's slot.

    Raises:
        ValueError: the cascade has fewer than two stages.
    """
    keep = config.keep or schema.keep
    models = list(config.models or DEFAULT_MODELS.get(len(keep), []))
    if len(models) < 2:
        raise ValueError(f"--prerank-model needs a cascade of at least two stages (keep={list(keep)})")
    models[1] = model
    return config.model_copy(update={"models": models})


def build_cascade(config: TrainConfig, schema: DatasetSchema) -> Cascade:
    """The cascade of ``config.models`` with ``config.keep`` (a resolved config), built from the dataset's
    feature spec."""
    run = Resolved.of(config)
    names = stage_names(len(run.keep))
    return Cascade(
        [
            Stage(name, build_model(model, schema, emb_dim=config.emb_dim, hidden=config.hidden), keep)
            for name, model, keep in zip(names, run.models, run.keep)
        ]
    )


def package_versions() -> dict[str, str]:
    """Versions of this package, torch, numpy, pyarrow and Python, and the platform (saved in metrics.json)."""
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


@dataclass
class StreamPosition:
    """Where training stands in the stream: the next batch to train is ``batch`` of partition ``partition``
    of pass ``pass_``; ``rng_state`` is the loader generator's state at the start of that partition."""

    pass_: int = 0
    partition: int = 0
    batch: int = 0
    step: int = 0
    requests: int = 0
    rng_state: dict | None = None


@dataclass
class LossCurve:
    """A bounded training-loss record: the loss of every ``LOSS_CURVE_EVERY``-th optimizer step (steps skipped
    as non-finite are not counted), how many were recorded in all, and the last one.

    ``points`` equals ``full_curve[::LOSS_CURVE_EVERY]`` of the unbounded list of losses, so memory and checkpoint
    size grow ten times slower than the number of steps.
    """

    points: list[float]
    count: int = 0
    last: float | None = None

    def add(self, value: float) -> None:
        if self.count % LOSS_CURVE_EVERY == 0:
            self.points.append(value)
        self.count += 1
        self.last = value

    def state(self) -> dict:
        return {"points": self.points, "count": self.count, "last": self.last}

    @classmethod
    def from_checkpoint(cls, state: dict) -> LossCurve:
        """Read the checkpoint's record; a checkpoint of an earlier version stored every loss (``loss_curve``)."""
        if "loss_record" in state:
            return cls(**state["loss_record"])
        full = state["loss_curve"]
        return cls(points=full[::LOSS_CURVE_EVERY], count=len(full), last=full[-1] if full else None)


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group under ``torchrun`` (WORLD_SIZE > 1)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process group initialised: backend %s, rank %d of %d", backend, dist.get_rank(), world)
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor, world: int) -> torch.Tensor:
    """Average gradients over ranks (what DistributedDataParallel does), the loss's weights included.

    The loss value rides in the same buffer (one collective per step) and its rank average is returned, so
    the logged loss is the global batch's.
    """
    if world == 1:
        return loss.detach()
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return flat[-1]


def _local_rows(batch, rank: int, world: int):
    """This rank's share of a global batch: rows ``rank, rank + world, ...`` (the same step count on every rank)."""
    return batch if world == 1 else batch.select(slice(rank, None, world))


def train(
    config: TrainConfig,
    *,
    data: Path,
    run_dir: Path,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int], None] | None = None,
    resume: bool = False,
) -> RunResult:
    """Train a cascade with ``config`` on the dataset at ``data``; write the run folder; return the metrics.

    Checkpoints are written atomically to ``run_dir/checkpoint.pt`` at every partition boundary and every
    ``config.checkpoint_every`` steps: models, optimizer, loss weights, torch RNG state and the position in the
    stream (pass, partition, batch, the loader generator's state at the partition's start). With ``resume``
    training restarts from that checkpoint and — on CPU, with the same seed — finishes with bitwise the same
    weights and metrics as an uninterrupted run.

    Under ``torchrun --nproc-per-node K`` (``WORLD_SIZE`` > 1) each global batch of ``batch_size`` requests is
    split across the K ranks (rows ``rank::K``), gradients (the loss's learnable weights included) are averaged
    across ranks after every backward pass, and evaluation statistics are summed across ranks; rank 0 writes
    the run folder. NCCL is used when CUDA is available, gloo otherwise.

    Args:
        config: the run configuration (``None`` fields are resolved from the dataset).
        data: dataset directory (store format).
        run_dir: output folder (created; files of a previous run there are replaced atomically).
        on_step: progress callback ``(step, total_steps, loss)``.
        on_eval: progress callback with the number of requests of each evaluated batch.
        resume: continue from ``run_dir/checkpoint.pt`` (written by an interrupted run of the same config).
            TensorBoard logging (``config.tensorboard``) appends to the same log directory; events that the
            interrupted run wrote after its checkpoint are purged (``purge_step``), so each step shows once.

    Raises:
        SchemaError / StoreError: the dataset is missing or malformed.
        ValueError: the configuration does not fit the dataset (keep sizes, models, unknown method).
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
        TrackingError: ``config.tensorboard`` is set but the ``tensorboard`` package is missing (raised before
            anything is written).
        TrainingError: a non-finite loss or gradient (names the step, method and batch), unless
            ``config.skip_nonfinite``, which skips such steps and records them in the metrics.
    """
    schema = open_dataset(data)
    config = resolve_config(config, schema, Path(data))
    run = Resolved.of(config)
    rank, world = _distributed()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    cascade = build_cascade(config, schema).to(device)
    loss_fn = losses.build(config.method, keep=run.keep, gt_num=run.gt_num, **config.loss).to(device)
    params = [p for p in list(cascade.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    needs_soft_label = getattr(loss_fn, "needs_soft_label", False)

    train_parts = schema.partitions_with_role("train")
    if not train_parts:
        raise ValueError(f"{data}: the dataset has no partition with role 'train'")
    steps_per_pass = sum(math.ceil(p.num_requests / run.batch_size) for p in train_parts)
    total_steps = steps_per_pass * run.passes

    position = StreamPosition()
    nonfinite: list[dict] = []
    loss_curve = LossCurve(points=[])
    train_seconds = 0.0
    if resume:
        state = _load_checkpoint(run_dir)
        cascade.load_state_dict(state["cascade"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        position = StreamPosition(**state["position"])
        nonfinite, train_seconds = state["nonfinite"], state["train_seconds"]
        loss_curve = LossCurve.from_checkpoint(state)
        log.info(
            "resuming %s at step %d (pass %d, partition %d, batch %d)",
            run_dir,
            position.step,
            position.pass_,
            position.partition,
            position.batch,
        )
    tracker = TensorBoardLogger(
        config.tensorboard if rank == 0 else None, purge_step=position.step + 1 if resume else None
    )
    if not resume and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    log.info(
        "training %s on %s: %d stages %s, keep %s, %d steps, %d rank(s)",
        config.method,
        data,
        len(run.keep),
        run.models,
        run.keep,
        total_steps,
        world,
    )

    def checkpoint(pos: StreamPosition) -> None:
        if rank == 0:
            save_checkpoint(
                run_dir,
                cascade,
                loss_fn,
                optimizer,
                pos,
                nonfinite=nonfinite,
                loss_curve=loss_curve,
                train_seconds=train_seconds + time.perf_counter() - t0,
            )
            tracker.flush()

    def track_step(step: int, parts: dict[str, torch.Tensor], loss_value: float, problem: str | None) -> None:
        """Log one step to TensorBoard (loss-module parameters as updated by the step)."""
        if problem:
            tracker.scalars(step, {"train/nonfinite_steps": float(len(nonfinite))})
            return
        rate = (requests_seen - start_requests) / max(time.perf_counter() - t0, 1e-9)
        lr = optimizer.param_groups[0]["lr"]
        scalars = step_scalars(loss=loss_value, parts=parts, loss_module=loss_fn, lr=lr, requests_per_second=rate)
        tracker.scalars(step, scalars)

    try:
        cascade.train()
        t0 = time.perf_counter()
        step, requests_seen = position.step, position.requests
        start_requests = requests_seen
        out = None
        for pass_ in range(position.pass_, run.passes):
            for index, partition in enumerate(train_parts):
                if (pass_, index) < (position.pass_, position.partition):
                    continue
                skip = 0
                if (pass_, index) == (position.pass_, position.partition) and position.rng_state:
                    rng.bit_generator.state = position.rng_state  # resuming inside this partition
                    skip = position.batch
                start_state = dict(rng.bit_generator.state)
                batches = iterate_partition(
                    data, schema, partition, batch_size=run.batch_size, shuffle=True, rng=rng,
                    window=config.shuffle_window,
                )  # fmt: skip
                for b, batch in enumerate(batches):
                    if b < skip:
                        continue
                    batch = _local_rows(batch, rank, world).to(device)
                    extra = {"soft_label": batch.soft_label} if needs_soft_label else {}
                    out = loss_fn(cascade(batch), label=batch.label, mask=batch.mask, stage=batch.stage, **extra)
                    out = LossOutput(*add_auxiliary_losses(out.loss, out.parts, cascade))  # DAT, IntTower
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    mean_loss = _all_reduce_gradients(params, out.loss, world)
                    loss_value = float(mean_loss)
                    problem = _nonfinite(mean_loss, params)
                    step += 1
                    if problem:
                        event = {
                            "step": step,
                            "method": config.method,
                            "partition": partition.name,
                            "batch": b,
                            "what": problem,
                            "request_ids": batch.request_id[:5].tolist(),
                        }
                        if not config.skip_nonfinite:
                            raise TrainingError(
                                f"{problem} at step {step} (method {config.method}, partition {partition.name}, "
                                f"batch {b}, first requests {event['request_ids']}); "
                                "rerun with skip_nonfinite to skip and count such steps"
                            )
                        log.warning("skipping step %d: %s", step, problem)
                        nonfinite.append(event)
                        optimizer.zero_grad(set_to_none=True)
                    else:
                        optimizer.step()
                        loss_curve.add(loss_value)
                    requests_seen += batch.batch_size * world
                    if tracker.enabled:
                        track_step(step, out.parts, loss_value, problem)
                    if on_step is not None:
                        on_step(step, total_steps, loss_value)
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        checkpoint(StreamPosition(pass_, index, b + 1, step, requests_seen, start_state))
                nxt = (pass_, index + 1) if index + 1 < len(train_parts) else (pass_ + 1, 0)
                position = StreamPosition(*nxt, 0, step, requests_seen, dict(rng.bit_generator.state))
                checkpoint(position)
        train_seconds += time.perf_counter() - t0

        cascade.eval()
        evaluation = {}
        t1 = time.perf_counter()
        for role in ("valid", "test"):
            if schema.partitions_with_role(role):
                evaluation[role] = evaluate_cascade(
                    cascade, config, data, schema, role, device=device, on_batch=on_eval, shard=(rank, world)
                )
        eval_seconds = time.perf_counter() - t1
        tracker.scalars(step, metric_scalars(evaluation))

        metrics = {
            "method": config.method,
            "loss_hyperparameters": losses.hyperparameters(config.method, **config.loss),
            "seed": config.seed,
            "dataset": schema.name,
            "data": str(data),
            "stages": [s.name for s in cascade.stages],
            "steps": step,
            "train_requests": requests_seen,
            "train_seconds": train_seconds,
            "train_requests_per_second": requests_seen / max(train_seconds, 1e-9),
            "eval_seconds": eval_seconds,
            "final_loss": loss_curve.last,
            "final_loss_parts": {k: float(v) for k, v in out.parts.items()} if out is not None else {},
            "loss_curve_every_10_steps": loss_curve.points,
            "nonfinite_steps": nonfinite,
            "world_size": world,
            "versions": package_versions(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            **evaluation,
        }
        if rank == 0:
            write_text_atomic(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    finally:
        tracker.close()
    return RunResult(run_dir=run_dir, config=config, metrics=metrics)


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
        ValueError: the dataset has no partition with that role.
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


def _nonfinite(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> str | None:
    """``"non-finite loss"`` / ``"non-finite gradient"`` or ``None`` (one reduction, one sync)."""
    if not torch.isfinite(loss.detach()):
        return f"non-finite loss {float(loss.detach())}"
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    if norms and not torch.isfinite(torch.stack(norms).sum()):
        return "non-finite gradient"
    return None


def save_checkpoint(
    run_dir: Path,
    cascade: Cascade,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: StreamPosition,
    *,
    nonfinite: list[dict],
    loss_curve: LossCurve,
    train_seconds: float,
) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically (temp file + rename): a kill never leaves half a file.

    The loss record is the bounded :class:`LossCurve` (every ``LOSS_CURVE_EVERY``-th loss), not every step's.
    """
    state = {
        "cascade": cascade.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "position": asdict(position),
        "nonfinite": nonfinite,
        "loss_record": loss_curve.state(),
        "train_seconds": train_seconds,
    }
    with atomic_path(run_dir / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; nothing to resume (was {run_dir} written by `train`?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc


def load_run(run_dir: Path, *, data: Path | None = None) -> tuple[TrainConfig, DatasetSchema, Path, Cascade]:
    """Rebuild a saved run's cascade (weights loaded) and its dataset. ``data`` overrides the saved path.

    Raises:
        FileNotFoundError: ``run_dir`` lacks config.json or checkpoint.pt (names the file).
    """
    for name in (CONFIG_FILE, CHECKPOINT_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: missing; is {run_dir} a run folder written by `train`?")
    config = load_config(run_dir)
    if data is None:
        if config.data is None:
            raise ValueError(f"{run_dir / CONFIG_FILE}: no dataset path saved; give the dataset folder")
        data = config.data
    data = Path(data)
    schema = open_dataset(data)
    cascade = build_cascade(config, schema)
    try:
        cascade.load_state_dict(_load_checkpoint(run_dir)["cascade"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ValueError(
            f"{run_dir / CHECKPOINT_FILE} does not fit dataset {data} (different features or vocabulary sizes?): "
            f"{detail}"
        ) from None
    return config, schema, data, cascade


def load_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run folder."""
    from pydantic import ValidationError

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {run_dir} a run folder written by `train`?")
    try:
        return TrainConfig.model_validate_json(path.read_text())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: not a valid run configuration ({problems})") from None

"""The streaming training protocol (RecFlow protocol; Wang et al. ICML 2025, Sec. 4.1) as named steps.

Train the whole cascade jointly on the training partitions in time order (shuffled within a partition),
Adam with lr 0.01 over the stage models *and* the loss's learnable weights, then evaluate on the test
partition (and report the validation partition too). RecFlow uses one pass at batch 1024; a dataset may
carry its own defaults (``schema.train_defaults``): MovieLens-100K has only ~7k training requests.

A run folder holds ``config.json`` (the resolved config), ``metrics.json`` (seed, versions, timings, loss
curve summary, validation and test metrics) and ``checkpoint.pt`` (model, loss and optimizer states); the
names are in :mod:`cascade_ranking.training.runfiles`. With ``config.tensorboard`` set, the loss, its parts,
the loss's learnable parameters, the learning rate and the throughput are also logged to TensorBoard every step
(:mod:`cascade_ranking.training.tracking`).

The steps of :func:`train`: set up (:class:`_Run`: device, seeds, cascade, loss, optimizer), restore a
checkpoint (``_Run.restore``), train every partition of every pass (``_Run.train_partition``, one
``_Run.step`` per batch, checkpoints at partition boundaries), evaluate (``_Run.evaluate``), write the metrics
record (``_Run.metrics_record``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import losses
from ..data.atomic import write_json_atomic
from ..data.loader import iterate_partition
from ..data.prefetch import pin_batches, prefetch
from ..data.schema import DatasetSchema, Partition
from ..data.store import check_labels, open_dataset
from ..models.auxiliary import add_auxiliary_losses
from ..types import LossOutput, RequestBatch
from .build import Resolved, build_cascade, resolve_config
from .checkpoint import (
    LossCurve,
    StreamPosition,
    checkpoint_mismatch,
    load_checkpoint,
    model_memory_errors,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import all_reduce_gradients, init_distributed, local_rows, rank_device, resolve_device
from .early_stopping import EarlyStopper
from .evaluate import evaluate_cascade
from .fingerprint import FINGERPRINT_KEY, fingerprint_differences, run_fingerprint
from .optim import adam
from .runfiles import CHECKPOINT_FILE, CONFIG_FILE, LOSS_CURVE_KEY, METRICS_FILE, package_versions
from .runfolder import claim_run_folder
from .threads import auto_candidates, choose_threads, resolve_threads
from .tracking import TensorBoardLogger, metric_scalars, step_scalars

__all__ = ["RunResult", "TrainingError", "train"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step, method and batch."""


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the resolved config and the metrics (as in metrics.json)."""

    run_dir: Path
    config: TrainConfig
    metrics: dict


def train(
    config: TrainConfig,
    *,
    data: Path,
    run_dir: Path,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int], None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    validation: Callable[[torch.nn.Module], float] | None = None,
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
        run_dir: output folder (created), owned for the run (:func:`~.runfolder.claim_run_folder`: a lock, no
            mixing with a previous run, no leftovers of killed writers).
        on_step: progress callback ``(step, total_steps, loss)``.
        on_eval: progress callback with the number of requests of each evaluated batch.
        resume: continue from ``run_dir/checkpoint.pt`` (written by an interrupted run of the same config).
            TensorBoard logging (``config.tensorboard``) appends to the same log directory; events that the
            interrupted run wrote after its checkpoint are purged (``purge_step``), so each step shows once.
            The checkpoint's run fingerprint (:mod:`.fingerprint`) must match ``config`` and the dataset.
        overwrite: a new run may replace the finished or unfinished run ``run_dir`` holds.
        validation: with ``config.early_stopping``, the validation metric to maximise, computed from the cascade
            (in eval mode, without gradients); ``None`` = ``config.early_stopping.metric`` of the validation
            metrics (:func:`~.evaluate.evaluate_cascade` on the ``valid`` partitions). The pre-ranking benchmark
            passes RankTower's per-user Recall@100 here.

    Raises:
        SchemaError / StoreError: the dataset is missing or malformed.
        ValueError: the configuration does not fit the dataset (keep sizes, models, unknown method), or
            ``config.early_stopping`` without a ``valid`` partition or with an unknown metric.
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
        RunFolderError: ``run_dir`` is in use by another process, or holds a run and neither ``overwrite`` nor
            ``resume`` is set (nothing is written).
        ModelSizeError: the models do not fit in memory (names ``emb_dim`` and the largest vocabulary).
        TrackingError: ``config.tensorboard`` is set but the ``tensorboard`` package is missing (raised before
            anything is written).
        TrainingError: a non-finite loss or gradient (names the step, method and batch), unless
            ``config.skip_nonfinite``, which skips such steps and records them in the metrics.
    """
    run = _Run(config, Path(data), run_dir, on_step=on_step, validation=validation)
    with claim_run_folder(run_dir, overwrite=overwrite, resume=resume) if run.rank == 0 else nullcontext():
        if resume:
            run.restore()
        run.open_tracker(resume)
        if not resume and run.rank == 0:
            write_json_atomic(run_dir / CONFIG_FILE, run.config.model_dump(mode="json"))
        run.log_start()
        try:
            run.train_all()
            evaluation, eval_seconds = run.evaluate(on_eval)
            metrics = run.metrics_record(evaluation, eval_seconds)
            if run.rank == 0:
                write_json_atomic(run_dir / METRICS_FILE, metrics)
        finally:
            run.tracker.close()
    return RunResult(run_dir=run_dir, config=run.config, metrics=metrics)


class _Run:
    """The state of one training run and its steps (see the module docstring); used by :func:`train` only."""

    def __init__(
        self,
        config: TrainConfig,
        data: Path,
        run_dir: Path,
        *,
        on_step: Callable[[int, int, float], None] | None,
        validation: Callable[[torch.nn.Module], float] | None = None,
    ) -> None:
        self.data, self.run_dir, self.on_step, self.validation = data, run_dir, on_step, validation
        self.schema: DatasetSchema = open_dataset(data)
        check_labels(data, self.schema)  # every partition's labels, from the footers: before training, not after
        self.config = config = resolve_config(config, self.schema, data)
        self.resolved = Resolved.of(config)
        self.fingerprint = run_fingerprint(config, data)
        self.rank, self.world = init_distributed()
        self.device = rank_device(resolve_device(config.device), self.rank, self.world)
        # "auto": measured on the first batch (on CPU; a GPU run keeps torch's count for its host-side work)
        self.threads_pending = resolve_threads(config.threads) is None and self.device.type == "cpu"
        cuda = self.device.type == "cuda"
        self.pinned = cuda  # batches in page-locked memory: asynchronous copies to the GPU
        self.prefetch_depth = config.prefetch if config.prefetch is not None else 2 if cuda else 0
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        with model_memory_errors(config, self.schema):
            self.cascade = build_cascade(config, self.schema).to(self.device)
            self.loss_fn = losses.build(
                config.method, keep=self.resolved.keep, gt_num=self.resolved.gt_num, **config.loss
            ).to(self.device)
        trainable = list(self.cascade.parameters()) + list(self.loss_fn.parameters())
        self.params = [p for p in trainable if p.requires_grad]
        self.optimizer = adam(self.params, config.lr)  # fused where torch has the kernel (same update rule)
        self.train_parts = self.schema.partitions_with_role("train")
        if not self.train_parts:
            raise ValueError(f"{data}: the dataset has no partition with role 'train'")
        steps_per_pass = sum(math.ceil(p.num_requests / self.resolved.batch_size) for p in self.train_parts)
        self.total_steps = steps_per_pass * self.resolved.passes
        self.position = StreamPosition()
        self.nonfinite: list[dict] = []
        self.loss_curve = LossCurve(points=[])
        self.train_seconds = 0.0
        self.step_count = self.requests_seen = self.start_requests = 0
        self.t0 = time.perf_counter()
        self.last_parts: dict[str, torch.Tensor] | None = None
        self.stopper = EarlyStopper(config.early_stopping) if config.early_stopping else None
        if self.stopper and not self.schema.partitions_with_role("valid"):
            raise ValueError(f"{data}: early_stopping needs a partition with role 'valid'; the dataset has none")

    # -- set-up -------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Load the models, loss, optimizer, RNG state and stream position of ``run_dir``'s checkpoint."""
        state = load_checkpoint(self.run_dir)
        changed = fingerprint_differences(state.get(FINGERPRINT_KEY), self.fingerprint)
        if FINGERPRINT_KEY in state and changed:
            raise ValueError(
                f"{self.run_dir / CHECKPOINT_FILE}: written by another run ({', '.join(changed)} differ from "
                f"{self.run_dir / CONFIG_FILE} and {self.data}); cannot resume it"
            )
        with checkpoint_mismatch(self.run_dir / CHECKPOINT_FILE):
            self.cascade.load_state_dict(state["cascade"])
            self.loss_fn.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            self.position = p = StreamPosition(**state["position"])
            self.nonfinite, self.train_seconds = state["nonfinite"], state["train_seconds"]
            self.loss_curve = LossCurve.from_checkpoint(state)
            if self.stopper is not None:
                self.stopper = EarlyStopper.from_state(self.stopper.settings, state.get("early_stopping"))
            if state.get("last_loss_parts") is not None:
                self.last_parts = {k: torch.tensor(v) for k, v in state["last_loss_parts"].items()}
        log.info(
            "resuming %s at step %d (pass %d, partition %d, batch %d)",
            self.run_dir, p.step, p.pass_, p.partition, p.batch,
        )  # fmt: skip

    def open_tracker(self, resume: bool) -> None:
        """TensorBoard logging on rank 0 (a no-op logger when ``config.tensorboard`` is unset)."""
        self.tracker = TensorBoardLogger(
            self.config.tensorboard if self.rank == 0 else None,
            purge_step=self.position.step + 1 if resume else None,
        )

    def log_start(self) -> None:
        run = self.resolved
        log.info(
            "training %s on %s: %d stages %s, keep %s, %d steps, %d rank(s)",
            self.config.method, self.data, len(run.keep), run.models, run.keep, self.total_steps, self.world,
        )  # fmt: skip

    # -- training -----------------------------------------------------------------------------------------
    def train_all(self) -> None:
        """Every pass over every training partition, from the restored position on."""
        self.cascade.train()
        self.t0 = time.perf_counter()
        self.step_count, self.requests_seen = self.position.step, self.position.requests
        self.start_requests = self.requests_seen
        start = self.position
        for pass_ in range(start.pass_, self.resolved.passes):
            for index, partition in enumerate(self.train_parts):
                here = (pass_, index)
                if here >= (start.pass_, start.partition) and not self.stopping:
                    self.train_partition(pass_, index, partition, resuming=here == (start.pass_, start.partition))
        self.train_seconds += time.perf_counter() - self.t0
        if self.stopper is not None:
            self.finish_early_stopping()

    @property
    def stopping(self) -> bool:
        """Whether early stopping has ended training."""
        return self.stopper is not None and self.stopper.stopped_at is not None

    def finish_early_stopping(self) -> None:
        """A last check when the last step fell between checks; the best check's weights back; a final
        checkpoint that a resume reads as finished."""
        stopper = self.stopper
        assert stopper is not None
        if not self.stopping and not stopper.checked(self.step_count):
            stopper.update(self.step_count, self.validate(), self.cascade)
        weights = stopper.best_weights()
        if weights is not None:
            self.cascade.load_state_dict(weights)
            log.info("kept the weights of step %d (validation %s %.6g)", stopper.best_step,
                     stopper.settings.metric, stopper.best_value)  # fmt: skip
        self.position = StreamPosition(self.resolved.passes, 0, 0, self.step_count, self.requests_seen, None)
        self.checkpoint(self.position)

    def validate(self) -> float:
        """The early-stopping metric on the validation partitions (model in eval mode; the RNG state kept)."""
        assert self.stopper is not None
        metric = self.stopper.settings.metric
        self.cascade.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            if self.validation is not None:
                value = float(self.validation(self.cascade))
            else:
                metrics = evaluate_cascade(self.cascade, self.config, self.data, self.schema, "valid",
                                           device=self.device, shard=(self.rank, self.world))  # fmt: skip
                if metric not in metrics:
                    raise ValueError(f"early_stopping.metric {metric!r}: not a validation metric; known: "
                                     f"{', '.join(sorted(metrics))}")  # fmt: skip
                value = float(metrics[metric])
        self.cascade.train()
        self.tracker.scalars(self.step_count, {f"valid/{metric}": value})
        return value

    def train_partition(self, pass_: int, index: int, partition: Partition, *, resuming: bool) -> None:
        """One partition, shuffled; a checkpoint at its end (and every ``checkpoint_every`` steps)."""
        skip = 0
        if resuming and self.position.rng_state:
            self.rng.bit_generator.state = self.position.rng_state  # resuming inside this partition
            skip = self.position.batch
        start_state = dict(self.rng.bit_generator.state)
        batches = prefetch(
            (local_rows(x, self.rank, self.world) for x in iterate_partition(
                self.data, self.schema, partition, batch_size=self.resolved.batch_size, shuffle=True, rng=self.rng,
                window=self.config.shuffle_window,
            )),
            self.prefetch_depth, prepare=pin_batches if self.pinned else None,
        )  # fmt: skip
        every = self.config.checkpoint_every
        for b, batch in enumerate(batches):
            if b < skip:
                continue
            self.step(batch, partition, b)
            if self.stopper is not None and self.stopper.due(self.step_count):
                self.stopper.update(self.step_count, self.validate(), self.cascade)
            if self.stopping:
                return  # finish_early_stopping writes the final checkpoint
            if every and self.step_count % every == 0:
                self.checkpoint(StreamPosition(pass_, index, b + 1, self.step_count, self.requests_seen, start_state))
        nxt = (pass_, index + 1) if index + 1 < len(self.train_parts) else (pass_ + 1, 0)
        self.position = StreamPosition(*nxt, 0, self.step_count, self.requests_seen, dict(self.rng.bit_generator.state))
        self.checkpoint(self.position)

    def step(self, batch: RequestBatch, partition: Partition, b: int) -> None:
        """One optimizer step on ``batch``, this rank's share (skipped and counted when non-finite)."""
        batch = batch.to(self.device, non_blocking=self.pinned)
        if self.threads_pending:
            self.choose_threads(batch)
        out = self.loss_fn(
            self.cascade(batch), label=batch.label, mask=batch.mask, stage=batch.stage, soft_label=batch.soft_label
        )
        out = LossOutput(*add_auxiliary_losses(out.loss, out.parts, self.cascade))  # DAT's AMM/CAL, IntTower's CIR
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        mean_loss = all_reduce_gradients(self.params, out.loss, self.world)
        loss_value = float(mean_loss)
        problem = _nonfinite(mean_loss, self.params)
        self.step_count += 1
        if problem:
            self.skip_nonfinite(problem, batch, partition, b)
        else:
            self.optimizer.step()
            self.loss_curve.add(loss_value)
        self.last_parts = out.parts
        self.requests_seen += batch.batch_size * self.world
        if self.tracker.enabled:
            self.track_step(out.parts, loss_value, problem)
        if self.on_step is not None:
            self.on_step(self.step_count, self.total_steps, loss_value)

    def choose_threads(self, batch: RequestBatch) -> None:
        """``threads="auto"``: time this batch's forward and backward pass at each candidate thread count
        (no optimizer step; gradients and the torch RNG state are left as they were) and keep the fastest."""

        def probe() -> None:
            out = self.loss_fn(
                self.cascade(batch), label=batch.label, mask=batch.mask, stage=batch.stage,
                soft_label=batch.soft_label,
            )  # fmt: skip
            out.loss.backward()
            self.optimizer.zero_grad(set_to_none=True)

        with torch.random.fork_rng(devices=[]):
            choose_threads(probe, auto_candidates())
        self.threads_pending = False

    def skip_nonfinite(self, problem: str, batch: RequestBatch, partition: Partition, b: int) -> None:
        """Record a non-finite step, or raise :class:`TrainingError` unless ``config.skip_nonfinite``."""
        step, method = self.step_count, self.config.method
        event = {
            "step": step,
            "method": method,
            "partition": partition.name,
            "batch": b,
            "what": problem,
            "request_ids": batch.request_id[:5].tolist(),
        }
        if not self.config.skip_nonfinite:
            raise TrainingError(
                f"{problem} at step {step} (method {method}, partition {partition.name}, "
                f"batch {b}, first requests {event['request_ids']}); "
                "rerun with skip_nonfinite to skip and count such steps"
            )
        log.warning("skipping step %d: %s", step, problem)
        self.nonfinite.append(event)
        self.optimizer.zero_grad(set_to_none=True)

    def track_step(self, parts: dict[str, torch.Tensor], loss_value: float, problem: str | None) -> None:
        """Log one step to TensorBoard (loss-module parameters as updated by the step)."""
        if problem:
            self.tracker.scalars(self.step_count, {"train/nonfinite_steps": float(len(self.nonfinite))})
            return
        rate = (self.requests_seen - self.start_requests) / max(time.perf_counter() - self.t0, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        scalars = step_scalars(loss=loss_value, parts=parts, loss_module=self.loss_fn, lr=lr, requests_per_second=rate)
        self.tracker.scalars(self.step_count, scalars)

    def checkpoint(self, position: StreamPosition) -> None:
        if self.rank == 0:
            save_checkpoint(
                self.run_dir, self.cascade, self.loss_fn, self.optimizer, position,
                nonfinite=self.nonfinite, loss_curve=self.loss_curve,
                train_seconds=self.train_seconds + time.perf_counter() - self.t0,
                extra={FINGERPRINT_KEY: self.fingerprint, "last_loss_parts": _floats(self.last_parts),
                       **({"early_stopping": self.stopper.state()} if self.stopper else {})},
            )  # fmt: skip
            self.tracker.flush()

    # -- evaluation and the record ------------------------------------------------------------------------
    def evaluate(self, on_eval: Callable[[int], None] | None) -> tuple[dict[str, dict[str, float]], float]:
        """Metrics on the validation and test partitions (those the dataset has) and the seconds taken."""
        self.cascade.eval()
        evaluation = {}
        t1 = time.perf_counter()
        for role in ("valid", "test"):
            if self.schema.partitions_with_role(role):
                evaluation[role] = evaluate_cascade(
                    self.cascade, self.config, self.data, self.schema, role, device=self.device, on_batch=on_eval,
                    shard=(self.rank, self.world),
                )  # fmt: skip
        eval_seconds = time.perf_counter() - t1
        self.tracker.scalars(self.step_count, metric_scalars(evaluation))
        return evaluation, eval_seconds

    def metrics_record(self, evaluation: dict[str, dict[str, float]], eval_seconds: float) -> dict:
        """What ``metrics.json`` holds."""
        config, parts = self.config, self.last_parts
        return {
            "method": config.method,
            "loss_hyperparameters": losses.hyperparameters(config.method, **config.loss),
            "seed": config.seed,
            "dataset": self.schema.name,
            "data": str(self.data),
            "stages": [s.name for s in self.cascade.stages],
            "steps": self.step_count,
            "train_requests": self.requests_seen,
            "train_seconds": self.train_seconds,
            "train_requests_per_second": self.requests_seen / max(self.train_seconds, 1e-9),
            "eval_seconds": eval_seconds,
            "final_loss": self.loss_curve.last,
            "final_loss_parts": _floats(parts) or {},
            LOSS_CURVE_KEY: self.loss_curve.points,
            "nonfinite_steps": self.nonfinite,
            "world_size": self.world,
            "versions": package_versions(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            FINGERPRINT_KEY: self.fingerprint,
            **({"early_stopping": self.stopper.record()} if self.stopper else {}),
            **evaluation,
        }


def _floats(parts: dict[str, torch.Tensor] | None) -> dict[str, float] | None:
    return {k: float(v) for k, v in parts.items()} if parts is not None else None


def _nonfinite(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> str | None:
    """``"non-finite loss"`` / ``"non-finite gradient"`` or ``None`` (one reduction, one sync)."""
    if not torch.isfinite(loss.detach()):
        return f"non-finite loss {float(loss.detach())}"
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    if norms and not torch.isfinite(torch.stack(norms).sum()):
        return "non-finite gradient"
    return None

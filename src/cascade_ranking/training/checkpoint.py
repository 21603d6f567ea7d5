"""Checkpoints and saved runs: the stream position, the bounded loss record, atomic checkpoint writes, and
loading a finished run folder (:func:`load_run` -> :class:`LoadedRun`)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cascade import Cascade
from ..data.atomic import atomic_path
from ..data.schema import DatasetSchema
from ..data.store import open_dataset
from ..errors import validation_problems
from ..types import check_keep
from .build import Resolved, build_cascade
from .config import TrainConfig
from .runfiles import CHECKPOINT_FILE, CONFIG_FILE, LOSS_CURVE_EVERY

__all__ = [
    "LoadedRun",
    "LossCurve",
    "ModelSizeError",
    "StreamPosition",
    "checkpoint_mismatch",
    "load_checkpoint",
    "load_config",
    "load_run",
    "model_memory_errors",
    "save_checkpoint",
    "saved_data_path",
]


class ModelSizeError(ValueError):
    """The configured models cannot be allocated (names ``emb_dim``, ``hidden`` and the largest vocabulary)."""


@contextmanager
def model_memory_errors(config: TrainConfig, schema: DatasetSchema) -> Iterator[None]:
    """Turn a failed allocation while building models (``MemoryError``, torch's "can't allocate" or an
    overflowing size) into a :class:`ModelSizeError` naming the sizes that asked for it."""
    try:
        yield
    except (MemoryError, RuntimeError, OverflowError) as exc:
        text = str(exc)
        if not isinstance(exc, (MemoryError, OverflowError)) and "alloc" not in text and "memory" not in text:
            raise
        largest = max(schema.features, key=lambda f: f.vocab_size)
        raise ModelSizeError(
            f"cannot allocate the models: emb_dim={config.emb_dim}, hidden={config.hidden}, largest vocabulary "
            f"{largest.role}.{largest.name}={largest.vocab_size} need "
            f"~{largest.vocab_size * config.emb_dim * 4 / 2**30:.1f} GiB for that table alone; lower emb_dim "
            f"({type(exc).__name__}: {text.splitlines()[0][:120] if text else 'out of memory'})"
        ) from None


@contextmanager
def checkpoint_mismatch(path: Path) -> Iterator[None]:
    """Turn a checkpoint whose states do not fit the built run (another method, stage count or model) into a
    one-line ``ValueError`` naming the file."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        detail = " ".join(line.strip() for line in lines[:3])[:300]
        raise ValueError(
            f"{path}: does not fit this run's models, loss or optimizer (a checkpoint of another method, stage "
            f"count or model?): {detail}"
        ) from None


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
    extra: dict | None = None,
) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically (temp file + rename): a kill never leaves half a file.

    The loss record is the bounded :class:`LossCurve` (every ``LOSS_CURVE_EVERY``-th loss), not every step's.
    ``extra`` adds entries (the run fingerprint, the last step's loss parts).

    Raises:
        OSError: the file cannot be written (e.g. the disk is full; names the file); the previous checkpoint
            stays as it was.
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
        **(extra or {}),
    }
    path = run_dir / CHECKPOINT_FILE
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch reports a failed write (ENOSPC, EIO) as a RuntimeError
        raise OSError(f"{path}: cannot write the checkpoint ({str(exc).splitlines()[0]})") from None


def load_checkpoint(run_dir: Path) -> dict:
    """The state :func:`save_checkpoint` wrote (tensors on the CPU).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: the file is not a readable checkpoint (names the file).
    """
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; nothing to resume (was {run_dir} written by `train`?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc


def load_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run folder.

    Raises:
        FileNotFoundError: no ``config.json`` in ``run_dir``.
        ValueError: the file is not a valid run configuration (names the file and the fields).
    """
    from pydantic import ValidationError

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {run_dir} a run folder written by `train`?")
    try:
        return TrainConfig.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid run configuration ({validation_problems(exc, 'file')})") from None


def saved_data_path(run_dir: Path, config: TrainConfig) -> Path:
    """The dataset path a run folder's config names: absolute since this release; a relative path (older runs)
    is tried from the current directory, then from the run folder.

    Raises:
        ValueError: no dataset path saved.
    """
    if config.data is None:
        raise ValueError(f"{run_dir / CONFIG_FILE}: no dataset path saved; give the dataset folder (--data)")
    data = Path(config.data)
    if not data.is_absolute() and not data.exists() and (run_dir / data).exists():
        return run_dir / data
    return data


@dataclass
class LoadedRun:
    """A saved run rebuilt by :func:`load_run`.

    Attributes:
        config: the run's resolved configuration.
        schema: the dataset's schema.
        data: the dataset folder used.
        cascade: the cascade with the checkpoint's weights (on the CPU, in training mode as built).
    """

    config: TrainConfig
    schema: DatasetSchema
    data: Path
    cascade: Cascade


def load_run(run_dir: Path, *, data: Path | None = None) -> LoadedRun:
    """Rebuild a saved run's cascade (weights loaded) and its dataset. ``data`` overrides the saved path.

    Raises:
        FileNotFoundError: ``run_dir`` lacks config.json or checkpoint.pt (names the file).
        ValueError: no dataset path saved and none given, or a checkpoint that does not fit the dataset.
    """
    for name in (CONFIG_FILE, CHECKPOINT_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: missing; is {run_dir} a run folder written by `train`?")
    config = load_config(run_dir)
    if data is None:
        data = saved_data_path(run_dir, config)
    data = Path(data)
    schema = open_dataset(data)
    run = Resolved.of(config)
    check_keep(
        run.keep,
        num_candidates=schema.num_candidates,
        what=f"the run's keep (dataset {data} has N={schema.num_candidates})",
    )
    with model_memory_errors(config, schema):
        cascade = build_cascade(config, schema)
    try:
        cascade.load_state_dict(load_checkpoint(run_dir)["cascade"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ValueError(
            f"{run_dir / CHECKPOINT_FILE} does not fit dataset {data} (different features or vocabulary sizes?): "
            f"{detail}"
        ) from None
    return LoadedRun(config=config, schema=schema, data=data, cascade=cascade)

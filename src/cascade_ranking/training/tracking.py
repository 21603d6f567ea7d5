"""Optional experiment tracking: TensorBoard scalars written during training, a no-op when disabled.

:class:`TensorBoardLogger` wraps ``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard``
package: ``pip install tensorboard`` or ``pip install -e ".[tensorboard]"``). With ``log_dir=None`` it imports
nothing, creates no directory and every method returns at once, so a run without tracking pays nothing.

Tags written by :func:`cascade_ranking.training.loop.train` (see :func:`step_scalars`): ``loss/total``,
``loss/<part>`` for every named part of the loss output, ``loss_params/<name>`` (``loss_params/<name>/<i>`` for
vector parameters, e.g. LCRON's ``weights``), ``train/lr``, ``train/requests_per_second``, and after
evaluation ``valid/<metric>`` and ``test/<metric>``. The step is the training step (1-based).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "INSTALL_HINT",
    "TensorBoardLogger",
    "TrackingError",
    "metric_scalars",
    "step_scalars",
    "summary_writer_class",
]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install tensorboard  (or: pip install -e ".[tensorboard]")'


class TrackingError(RuntimeError):
    """Tracking was asked for but cannot work (the ``tensorboard`` package is missing)."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        TrackingError: the ``tensorboard`` package is not installed (the message says how to install it).
    """
    try:
        module = importlib.import_module("torch.utils.tensorboard")
    except ImportError as exc:
        raise TrackingError(f"TensorBoard logging needs the tensorboard package: {INSTALL_HINT} ({exc})") from None
    return module.SummaryWriter


class TensorBoardLogger:
    """Scalars to a TensorBoard log directory; every method is a no-op when ``log_dir`` is ``None``.

    Args:
        log_dir: the event-file directory (created on first use), or ``None`` to disable logging.
        purge_step: when resuming, the first step to be written again: TensorBoard then discards the events
            of earlier event files at this step and later (written after the checkpoint the run resumed from),
            so a resumed run shows each step once. ``None`` for a fresh run.
        flush_secs: how often the writer flushes pending events to disk.

    Raises:
        TrackingError: ``log_dir`` is given but the ``tensorboard`` package is missing.
    """

    def __init__(self, log_dir: str | Path | None, *, purge_step: int | None = None, flush_secs: int = 30) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer: Any = None
        if self.log_dir is not None:
            writer_class = summary_writer_class()
            self._writer = writer_class(log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs)
            log.info("TensorBoard logs: %s (view with: tensorboard --logdir %s)", self.log_dir, self.log_dir)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write every ``tag: value`` of ``values`` at ``step``."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def step_scalars(
    *,
    loss: float,
    parts: Mapping[str, torch.Tensor],
    loss_module: torch.nn.Module,
    lr: float,
    requests_per_second: float,
) -> dict[str, float]:
    """The scalars of one training step, moved to the host in a single transfer.

    Args:
        loss: the step's loss (already on the host; averaged over ranks under ``torchrun``).
        parts: the loss output's named parts (detached tensors, any device; scalars as ``loss/<name>``, other
            shapes flattened as ``loss/<name>/<i>``).
        loss_module: the loss; each of its parameters is logged (scalars as ``loss_params/<name>``, other
            shapes flattened as ``loss_params/<name>/<i>``, e.g. LCRON's ``loss_params/weights/0``).
        lr: the optimizer's learning rate.
        requests_per_second: training throughput so far.

    Returns:
        ``{tag: value}`` with ``loss/total``, ``loss/<part>``, ``loss_params/...``, ``train/lr``,
        ``train/requests_per_second``.
    """
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    named = [(f"loss/{k}", v) for k, v in parts.items()]
    named += [(f"loss_params/{k}", p) for k, p in loss_module.named_parameters()]
    for name, tensor in named:
        flat = tensor.detach().reshape(-1).float()
        names += [name] if tensor.dim() == 0 else [f"{name}/{i}" for i in range(flat.numel())]
        tensors.append(flat)
    values = torch.cat(tensors).tolist() if tensors else []
    out = {"loss/total": float(loss)}
    out.update(zip(names, values))
    out["train/lr"] = float(lr)
    out["train/requests_per_second"] = float(requests_per_second)
    return out


def metric_scalars(evaluation: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"<role>/<metric>": value}`` for every numeric metric of ``{"valid": {...}, "test": {...}}``."""
    return {
        f"{role}/{name}": float(value)
        for role, metrics in evaluation.items()
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }

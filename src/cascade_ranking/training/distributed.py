"""Devices and PyTorch distributed data parallel (``torchrun``): the process group, rank shares of a batch
and the gradient all-reduce."""

from __future__ import annotations

import logging
import os

import torch

from ..types import RequestBatch

__all__ = ["all_reduce_gradients", "init_distributed", "local_rows", "rank_device", "resolve_device"]

log = logging.getLogger(__name__)


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


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group under ``torchrun`` (WORLD_SIZE > 1).

    NCCL is used when CUDA is available, gloo otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process group initialised: backend %s, rank %d of %d", backend, dist.get_rank(), world)
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: torch.device, rank: int, world: int) -> torch.device:
    """Under ``torchrun`` on CUDA, this rank's GPU (``LOCAL_RANK``), made current; otherwise ``device``."""
    if device.type != "cuda" or world <= 1:
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.cuda.set_device(device)
    return device


def all_reduce_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor, world: int) -> torch.Tensor:
    """Average gradients over ranks (what DistributedDataParallel does), the loss's weights included.

    Args:
        params: the trained parameters; each ``p.grad`` (any shape, float) is replaced by the rank average.
        loss: this rank's 0-dim loss.
        world: the number of ranks (1: nothing is communicated).

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


def local_rows(batch: RequestBatch, rank: int, world: int) -> RequestBatch:
    """This rank's share of a global batch: rows ``rank, rank + world, ...`` (the same step count on every rank).

    Args:
        batch: the global batch, ``B`` requests.
        rank, world: this process's rank and the number of ranks; the share holds ``ceil((B - rank) / world)``.
    """
    return batch if world == 1 else batch.select(slice(rank, None, world))

"""Shared pieces of the cascade losses: the output type, input checks, the label permutation matrix.

Calling convention (every method, see ``cascade_ranking.losses.build``)::

    out = loss_fn(logits, label=label, mask=mask, stage=stage, soft_label=None)
    out.loss      # scalar tensor to minimise
    out.parts     # dict of named, detached scalar components (for logging)

* ``logits``: sequence of one ``[B, N]`` float tensor per cascade stage, retrieval first.
* ``label``: ``[B, N]`` float graded relevance, higher is better. Ground truth = the top ``gt_num``.
* ``mask``: ``[B, N]`` bool, ``True`` at valid candidates. Padded candidates get exactly zero gradient.
* ``stage``: ``[B, N]`` int64 funnel position (0 = filtered first by the logged system).
* ``soft_label``: optional ``[B, N]`` float, a ranking model's prediction; only distillation losses read it.

Reduction contract: a per-request value is averaged over requests that hold at least one valid candidate;
a batch with no valid candidate gives exactly 0 with finite (zero) gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..sorting import neural_sort
from ..types import CascadeLoss, LossOutput

__all__ = [
    "EPS",
    "LABEL_TAU",
    "CascadeLoss",
    "LossOutput",
    "check_inputs",
    "detached_parts",
    "label_permutation",
    "request_mean",
]

#: NeuralSort temperature of the label permutation matrix (as released with LCRON).
LABEL_TAU = 1e-4
#: epsilon inside logarithms (as released with LCRON).
EPS = 1e-6


def check_inputs(
    name: str,
    logits: Sequence[torch.Tensor],
    label: torch.Tensor,
    mask: torch.Tensor,
    stage: torch.Tensor,
    num_stages: int,
) -> None:
    """Validate the calling convention; raise ``ValueError``/``TypeError`` naming the method and argument.

    Args:
        name: the method, named in errors.
        logits: ``num_stages`` float tensors ``[B, N]``.
        label: ``[B, N]`` float, finite at valid candidates.
        mask: ``[B, N]`` bool.
        stage: ``[B, N]`` integer funnel positions.
        num_stages: the number of stages the loss was built for.
    """
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence):
        raise TypeError(f"{name}: logits must be a list of [B, N] tensors (one per stage, retrieval first)")
    if len(logits) != num_stages:
        raise ValueError(f"{name}: got logits for {len(logits)} stages, the loss was built for {num_stages} (keep)")
    shape = tuple(label.shape)
    if len(shape) != 2:
        raise ValueError(f"{name}: label must be [B, N], got shape {shape}")
    for i, x in enumerate(logits):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}: logits[{i}] has shape {tuple(x.shape)}, label has {shape}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: logits[{i}] must be floating point, got {x.dtype}")
    if tuple(mask.shape) != shape or mask.dtype != torch.bool:
        raise ValueError(f"{name}: mask must be a bool tensor of shape {shape}, got {mask.dtype} {tuple(mask.shape)}")
    if stage.dtype.is_floating_point or stage.dtype == torch.bool or stage.is_complex():
        raise TypeError(f"{name}: stage must be an integer tensor (funnel positions), got {stage.dtype}")
    if tuple(stage.shape) != shape:
        raise ValueError(f"{name}: stage must have shape {shape}, got {tuple(stage.shape)}")
    if not label.is_floating_point():
        raise TypeError(f"{name}: label must be floating point, got {label.dtype}")
    if not torch.isfinite(torch.where(mask, label, torch.zeros_like(label))).all():
        raise ValueError(f"{name}: label holds NaN or inf at valid candidates")


def label_permutation(label: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The label permutation matrix ``Y = NeuralSort(label, tau=1e-4)``, ``[B, N, N]``, masked.

    Tied labels share their places' mass, so ``y_plus = Y[:, :g].sum(-2)`` is fractional only where the
    ``g``-th place is tied. Computed without gradient; as released with LCRON (``label_permutation_matrix``).
    """
    with torch.no_grad():
        return neural_sort(label.to(dtype), tau=LABEL_TAU, mask=mask)


def request_mean(values: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B]`` over requests where ``include [B]`` (bool) holds; exactly 0 when none does."""
    w = include.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def detached_parts(**parts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``parts`` of a :class:`LossOutput`, detached from the graph.

    Args:
        **parts: name -> 0-dim tensor (a loss component or a learnable weight).
    """
    return {k: v.detach() for k, v in parts.items()}

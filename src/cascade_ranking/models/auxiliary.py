"""Auxiliary training losses of stage models (DAT's AMM and CAL, IntTower's CIR), and how they reach training.

Some pre-ranking models train with a regulariser of their own besides the ranking loss: DAT's adaptive-mimic
and category-alignment losses (Yu et al. 2021), IntTower's contrastive interaction regularisation (Li et al.,
CIKM 2022). They are computed from the towers' outputs of the *same* forward pass, so a model computes them in
``forward`` while training (``model.training`` and the batch carries labels) and keeps them, attached to the
graph, until :meth:`AuxiliaryLossModel.pop_auxiliary_losses` hands them over (and forgets them). The training
loop adds them to the loss with :func:`add_auxiliary_losses` (one call after ``loss_fn``): the loss modules,
the cascade and the model's ``forward(batch) -> [B, N]`` contract stay unchanged, and in evaluation or
serving nothing is computed or kept.

Every auxiliary value is already weighted by the model's own hyper-parameters; :func:`add_auxiliary_losses`
sums them into the loss and reports each one (detached) under ``parts["aux/<name>"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..types import RequestBatch

__all__ = ["AuxiliaryLossModel", "AuxiliaryLossStore", "add_auxiliary_losses", "collect_auxiliary_losses", "positives"]


@runtime_checkable
class AuxiliaryLossModel(Protocol):
    """A stage model that computes auxiliary losses in its training forward pass."""

    def pop_auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted auxiliary losses (0-dim tensors) of the last training forward pass; then forgets them."""
        ...


class AuxiliaryLossStore:
    """Mixin: keeps the auxiliary losses of the last training forward pass (see the module docstring)."""

    _auxiliary: dict[str, torch.Tensor]

    def _keep_auxiliary(self, values: Mapping[str, torch.Tensor]) -> None:
        self._auxiliary = dict(values)

    def pop_auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted auxiliary losses of the last training forward pass (empty if none); then forgets them."""
        out = getattr(self, "_auxiliary", {})
        self._auxiliary = {}
        return out


def positives(batch: RequestBatch, positive_label: float | None) -> torch.Tensor:
    """Positive candidates ``[B, N]`` bool for an auxiliary loss.

    Args:
        batch: the request batch (``label``, ``stage``, ``mask``).
        positive_label: a valid candidate is positive when ``label >= positive_label``; ``None``: when it is at its
            request's highest funnel position (the impressions of a full-stage dataset, the ``rank_pos`` of RecFlow).
    """
    if positive_label is None:
        top = torch.where(batch.mask, batch.stage, torch.full_like(batch.stage, -1)).amax(-1, keepdim=True)
        return batch.mask & (batch.stage >= top)
    return batch.mask & (batch.label >= float(positive_label))


def collect_auxiliary_losses(module: nn.Module) -> dict[str, torch.Tensor]:
    """Pop the auxiliary losses of every sub-module of ``module`` (e.g. a cascade) that has any.

    Names are ``<module path>/<loss name>`` (``stages.1.model/amm_user``, or the loss name for ``module`` itself).
    """
    out: dict[str, torch.Tensor] = {}
    for path, sub in module.named_modules():
        if isinstance(sub, AuxiliaryLossModel):
            for name, value in sub.pop_auxiliary_losses().items():
                out[f"{path}/{name}" if path else name] = value
    return out


def add_auxiliary_losses(loss: torch.Tensor, parts: Mapping[str, torch.Tensor], module: nn.Module):
    """``(loss + sum of the auxiliary losses, parts with "aux/<name>" added)`` for the models in ``module``.

    Args:
        loss: the ranking loss (0-dim).
        parts: its named components.
        module: the model or cascade whose training forward pass produced ``loss``.

    Returns:
        ``(total [0-dim], parts)``; unchanged when no model has auxiliary losses.
    """
    aux = collect_auxiliary_losses(module)
    if not aux:
        return loss, dict(parts)
    total = loss + sum(aux.values())
    return total, {**parts, **{f"aux/{k}": v.detach() for k, v in aux.items()}}

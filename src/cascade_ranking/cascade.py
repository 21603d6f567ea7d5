"""The cascade: ordered stages (retrieval first), each a model and the number of candidates it keeps.

Training scores every candidate with every stage (:meth:`Cascade.forward`); serving and evaluation run
the real top-k chain (:meth:`Cascade.select`, :func:`select_chain`): stage 1 keeps its top ``keep[0]``
valid candidates by its own scores, stage 2 its top ``keep[1]`` among those, and so on (Wang et al.,
"LCRON: Learning Cascade Ranking as One Network", ICML 2025, Sec. 2).

Ties in scores. Top-k selection is exact and deterministic: among equal scores the lower candidate slot
wins (a stable sort). Slot order carries no information in this package (the store writes candidates in a
seeded random order and the loader shuffles them again per request), so this rule cannot favour
relevant candidates. For data whose slot order may be informative, pass a ``torch.Generator``: ties are
then broken uniformly at random, independently of the slot order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .types import RequestBatch, check_keep

__all__ = ["Cascade", "Stage", "select_chain", "topk_mask"]


def _check_scores(scores: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{what} must be [B, N], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {scores.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {what} shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"{what} contains NaN; top-k selection is undefined (check the model)")


def topk_mask(
    scores: torch.Tensor, pool: torch.Tensor, k: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The top ``k`` candidates of ``pool`` by ``scores``, as a ``[B, N]`` bool mask.

    Exactly ``min(k, pool.sum(-1))`` candidates are selected per request, all inside ``pool`` (also when
    scores are ``-inf``). Ties: the lower slot wins, or uniformly at random with ``generator`` (see the
    module docstring). No gradient flows through the selection.

    Args:
        scores: ``[B, N]`` float scores (higher = better); NaN is rejected.
        pool: ``[B, N]`` bool, the candidates eligible for selection.
        k: number to keep, ``>= 0``.
        generator: optional ``torch.Generator`` for random tie-breaking (any device).

    Raises:
        ValueError / TypeError: wrong shapes or dtypes, NaN scores, negative ``k``.
    """
    _check_scores(scores, pool, "scores")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return _topk_mask(scores, pool, int(k), generator)


def _topk_mask(scores: torch.Tensor, pool: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    b, n = scores.shape
    with torch.no_grad():
        if generator is None:
            order = torch.arange(n, device=scores.device).expand(b, n)
        else:  # a uniformly random slot order per request: stable sorts below then break ties at random
            noise = torch.rand((b, n), generator=generator, device=generator.device).to(scores.device)
            order = noise.argsort(dim=-1)
        # Sort by score (descending, stable), then by pool membership (stable): pool members come first,
        # in score order; ties keep the previous (slot or random) order.
        s = scores.gather(1, order)
        order = order.gather(1, torch.sort(s, dim=-1, descending=True, stable=True).indices)
        member = pool.gather(1, order).to(torch.uint8)
        order = order.gather(1, torch.sort(member, dim=-1, descending=True, stable=True).indices)
        top = torch.zeros_like(pool).scatter_(1, order[:, : min(k, n)], True)
        return top & pool


def select_chain(
    logits: Sequence[torch.Tensor],
    mask: torch.Tensor,
    keep: Sequence[int],
    *,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Run the cascade's top-k chain: the candidates each stage keeps, as nested ``[B, N]`` bool masks.

    Stage ``i`` keeps its top ``keep[i]`` candidates, by ``logits[i]``, among those stage ``i - 1`` kept
    (stage 1: among the valid candidates). A request with fewer candidates in its pool than ``keep[i]``
    keeps its whole pool; masked candidates are never selected.

    Args:
        logits: one ``[B, N]`` float tensor per stage, retrieval first.
        mask: ``[B, N]`` bool, valid candidates.
        keep: keep sizes, positive and strictly decreasing, one per stage.
        generator: optional, for random tie-breaking (see the module docstring).

    Returns:
        list of ``[B, N]`` bool masks, one per stage, each a subset of the previous one.

    Raises:
        ValueError / TypeError: bad keep sizes, stage count mismatch, shapes, dtypes, NaN scores.
    """
    keep = check_keep(keep)
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence):
        raise TypeError("logits must be a list of [B, N] tensors, one per stage (retrieval first)")
    if len(logits) != len(keep):
        raise ValueError(f"got logits for {len(logits)} stages but {len(keep)} keep sizes ({list(keep)})")
    for i, s in enumerate(logits):
        _check_scores(s, mask, f"logits[{i}]")
    selected, pool = [], mask
    for s, k in zip(logits, keep):
        pool = _topk_mask(s.detach(), pool, k, generator)
        selected.append(pool)
    return selected


@dataclass(frozen=True)
class Stage:
    """One cascade stage: a ``name`` (``"retrieval"``, ``"prerank"``, ``"rank"``), a ``model`` mapping a
    :class:`RequestBatch` to ``[B, N]`` logits, and how many candidates it ``keep``-s."""

    name: str
    model: nn.Module
    keep: int


class Cascade(nn.Module):
    """Ordered stages, retrieval first; an ``nn.Module`` owning every stage model.

    Args:
        stages: the stages in cascade order.

    Raises:
        ValueError: no stage, a duplicate or invalid name (non-empty, no ``"."``), a model that is not an
            ``nn.Module``, or keep sizes that are not positive and strictly decreasing.
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        super().__init__()
        stages = list(stages)
        if not stages:
            raise ValueError("a Cascade needs at least one Stage")
        names = [s.name for s in stages]
        for s in stages:
            if not isinstance(s, Stage):
                raise TypeError(f"stages must be Stage objects, got {type(s).__name__}")
            if not isinstance(s.name, str) or not s.name or "." in s.name:
                raise ValueError(f"stage name {s.name!r} must be a non-empty string without '.'")
            if not isinstance(s.model, nn.Module):
                raise TypeError(f"stage {s.name!r}: model must be a torch.nn.Module, got {type(s.model).__name__}")
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.keep = check_keep([s.keep for s in stages], what=f"keep of stages {names}")
        self.stage_names = tuple(names)
        self.models = nn.ModuleDict({s.name: s.model for s in stages})

    @property
    def stages(self) -> list[Stage]:
        """The stages, in order."""
        return [Stage(n, self.models[n], k) for n, k in zip(self.stage_names, self.keep)]

    def __len__(self) -> int:
        return len(self.stage_names)

    def forward(self, batch: RequestBatch) -> list[torch.Tensor]:
        """Every stage scores every candidate slot: one ``[B, N]`` logits tensor per stage, retrieval first.

        Padded slots hold scores too; losses, :meth:`select` and the metrics mask them.

        Raises:
            ValueError: a stage model returned a tensor that is not ``[B, N]``.
        """
        shape = tuple(batch.mask.shape)
        out = []
        for name in self.stage_names:
            s = self.models[name](batch)
            if tuple(s.shape) != shape:
                raise ValueError(f"stage {name!r} returned logits of shape {tuple(s.shape)}, expected [B, N]={shape}")
            out.append(s)
        return out

    def select(
        self, logits: Sequence[torch.Tensor], mask: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """The real top-k chain with this cascade's keep sizes; see :func:`select_chain`."""
        return select_chain(logits, mask, self.keep, generator=generator)

"""Private helpers shared by the baseline cascade losses (BCE, ICC, RankFlow, FS-RankNet, FS-LambdaLoss, ARF).

Conventions (see :mod:`cascade_ranking.losses.base`): ``[B, N]`` tensors, ``mask`` bool (``True`` = valid),
``stage`` int64 funnel position (0 = filtered first). Every helper here is order-invariant: nothing depends
on the slot order of the candidates, only on their values, so the shuffled slots of our loader give the same
loss as the grouped layout of the released experiments.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..types import LossOutput, check_keep, positive_int
from .base import check_inputs

__all__ = [
    "StageLoss",
    "promoted_dtype",
    "zero_masked",
    "weighted_request_mean",
    "topk_weights",
    "default_top_position",
    "stage_ints",
]


def promoted_dtype(logits: Sequence[torch.Tensor]) -> torch.dtype:
    """The common floating dtype of the stage logits (``[B, N]`` each; float64 wins over float32)."""
    return functools.reduce(torch.promote_types, [x.dtype for x in logits])


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [..., N]`` with padded slots (``mask [..., N]`` False) replaced by 0: exactly zero gradient there."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def weighted_request_mean(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-request weighted mean over the last axis and whether the request has any weight.

    Args:
        values: ``[B, N]`` float.
        weights: ``[B, N]`` float, non-negative (0 at padded slots).

    Returns:
        ``(mean [B], has [B] bool)``; ``mean`` is 0 where the request has no weight.
    """
    total = weights.sum(-1)
    has = total > 0
    return (values * weights).sum(-1) / total.clamp_min(1e-12), has


def topk_weights(scores: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Membership of the hard top ``k`` by ``scores`` among the candidates of a (fractional) set ``weights``.

    Candidates are taken in descending score order until their total weight reaches ``k``. A group of tied
    scores straddling the cut-off is shared: each of its members keeps the same fraction of its weight, so
    the result never depends on slot order. With 0/1 weights and no tie at the cut-off this is exactly the
    ``torch.topk`` selection of the released code; with fewer than ``k`` candidates all are kept.

    Args:
        scores: ``[B, N]`` float (only compared; no gradient flows).
        weights: ``[B, N]`` float in ``[0, 1]``, 0 at candidates outside the set (padded ones included).
        k: number of candidates to keep, ``k >= 0``.

    Returns:
        ``[B, N]`` weights ``w'`` with ``0 <= w' <= weights`` and ``w'.sum(-1) = min(k, weights.sum(-1))``.
    """
    with torch.no_grad():
        s_j = scores.unsqueeze(-1)  # [B, N(j), 1]
        s_l = scores.unsqueeze(-2)  # [B, 1, N(l)]
        w_l = weights.unsqueeze(-2)
        above = ((s_l > s_j).to(weights.dtype) * w_l).sum(-1)  # weight strictly above j
        tied = ((s_l == s_j).to(weights.dtype) * w_l).sum(-1)  # weight of j's tie group (j included)
        frac = ((k - above) / tied.clamp_min(1e-12)).clamp(0.0, 1.0)
        return weights * frac


def default_top_position(num_stages: int) -> int:
    """Funnel position of the top group (the logged system's exposures) in the RecFlow layout.

    RecFlow has ``num_stages + 2`` funnel positions (two-stage: prerank_neg=0, coarse_neg=1, rank_neg=2,
    rank_pos=3; three-stage adds rerank_neg=3, rerank_pos=4), so the top group is ``num_stages + 1``.
    """
    return num_stages + 1


def stage_ints(method: str, name: str, value: Sequence[int], num_stages: int, *, minimum: int) -> tuple[int, ...]:
    """Validate a per-stage sequence of integers (one per stage, each ``>= minimum``)."""
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{method}: {name} must be a sequence of integers, got {value!r}") from exc
    if len(out) != num_stages or any(v != w for v, w in zip(out, value, strict=False)):
        raise ValueError(f"{method}: {name} must hold {num_stages} integers (one per stage), got {list(value)}")
    if any(v < minimum for v in out):
        raise ValueError(f"{method}: every entry of {name} must be >= {minimum}, got {list(out)}")
    return out


def check_soft_label(method: str, soft_label: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ``ValueError``/``TypeError`` naming ``method`` unless ``soft_label`` is a float tensor of ``label``'s
    shape, finite at the valid candidates (``mask``)."""
    if tuple(soft_label.shape) != tuple(label.shape):
        raise ValueError(f"{method}: soft_label must have shape {tuple(label.shape)}, got {tuple(soft_label.shape)}")
    if not soft_label.is_floating_point():
        raise TypeError(f"{method}: soft_label must be floating point, got {soft_label.dtype}")
    if not torch.isfinite(torch.where(mask, soft_label, torch.zeros_like(soft_label))).all():
        raise ValueError(f"{method}: soft_label holds NaN or inf at valid candidates")


class StageLoss(torch.nn.Module):
    """Template of a baseline loss: validates ``keep``/``gt_num`` and the call, then runs ``_compute``.

    Subclasses set ``method`` (the registry name, used in error messages) and implement
    ``_compute(logits, label, mask, stage) -> LossOutput`` on inputs already validated, with ``logits`` and
    ``label`` cast to one floating dtype (float64 if any stage's logits are float64).
    """

    method: str = "?"

    def __init__(self, *, keep: Sequence[int], gt_num: int = 10) -> None:
        super().__init__()
        self.keep = check_keep(keep, what=f"{self.method}: keep")
        self.gt_num = positive_int(gt_num, f"{self.method}: gt_num")

    @property
    def num_stages(self) -> int:
        return len(self.keep)

    def forward(
        self,
        logits: Sequence[torch.Tensor],
        *,
        label: torch.Tensor,
        mask: torch.Tensor,
        stage: torch.Tensor,
        soft_label: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of one batch: ``logits`` one ``[B, N]`` float tensor per stage, ``label [B, N]`` float,
        ``mask [B, N]`` bool, ``stage [B, N]`` integer (see :mod:`cascade_ranking.losses.base`); ``soft_label``
        (a ranking model's ``[B, N]`` predictions) is accepted by every loss and ignored by those that do not
        distil."""
        check_inputs(self.method, logits, label, mask, stage, self.num_stages)
        if soft_label is not None:
            check_soft_label(self.method, soft_label, label, mask)
        dtype = promoted_dtype(logits)
        logits, label = [x.to(dtype) for x in logits], label.to(dtype)
        if soft_label is None:
            return self._compute(logits, label, mask, stage)
        return self._compute_with_soft_label(logits, label, mask, stage, soft_label.to(dtype))

    def _compute_with_soft_label(
        self, logits: list[torch.Tensor], label: torch.Tensor, mask: torch.Tensor, stage: torch.Tensor, soft_label
    ) -> LossOutput:
        """The loss when a ``soft_label`` is given; losses that do not distil ignore it (the default)."""
        return self._compute(logits, label, mask, stage)

    def _compute(
        self, logits: list[torch.Tensor], label: torch.Tensor, mask: torch.Tensor, stage: torch.Tensor
    ) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

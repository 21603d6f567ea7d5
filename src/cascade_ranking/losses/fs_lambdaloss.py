"""FS-LambdaLoss: full-stage learning to rank with LambdaLoss pair weights, each stage trained alone.

Sources: Zheng et al., "Full Stage Learning to Rank: A Unified Framework for Multi-Stage Systems", WWW 2024
(every stage learns from the whole funnel's graded labels); Wang, Li, Golbandi, Bendersky, Najork, "The
LambdaLoss Framework for Ranking Metric Optimization", CIKM 2018 (NDCG-cost pair weights; the ``u``
discount is LambdaLoss's NDCG-Loss2 term, the ``v`` discount its "smooth" LambdaRank-like term, mixed as in
TF-Ranking's ``smooth_fraction``); Burges 2010 (pairwise logistic loss).

Per stage and request, over the ``n`` valid candidates with labels ``y`` (gains ``G_j = y_j / IDCG``,
``IDCG = sum_r y_(r) / ln(1 + r)`` over the labels sorted descending), ranks ``r_j`` (1-based) by the
stage's own scores, ``D(x) = 1 / ln(1 + x)`` and ``D_n(r) = D(r) 1[r <= n_top]``:

.. math::

    u_{jl} &= \\big|D(|r_j - r_l|) - D(|r_j - r_l| + 1)\\big|\\;
        \\mathbb 1[r_j \\ne r_l,\\ \\min(r_j, r_l) \\le n_{top}], \\qquad
    v_{jl} = |D_n(r_j) - D_n(r_l)| \\\\
    w_{jl} &= \\mathrm{sg}\\big(|G_j - G_l|\\,((1 - f) u_{jl} + f v_{jl})\\big), \\qquad
    L = \\sum_{j, l} w_{jl}\\, \\mathrm{BCE}\\big(s_j - s_l,\\ \\mathbb 1[y_j > y_l]\\big)

summed over ordered pairs, averaged over requests, summed over stages (the released scripts
back-propagate each stage into its own model). Defaults as released (kwai/LCRON ``run_train{2,3}.py`` and
``deep_components/loss/{two,three}_stage/fs_lambdaloss.py``): ``f = 0.8``, ``n_top = 30``, linear gain
(the label itself), natural-log discount.

Order invariance: ranks come from the scores; tied scores are ranked pessimistically (the candidate with
the lower label first) and ties of both score and label by slot index, which cannot change the value
(such candidates are interchangeable in every pair term). The released ``argsort`` breaks score ties in
an unspecified order; without ties the value is the released one.

Masks (the released code assumes all valid): padded candidates get no rank, no gain (IDCG over the valid
labels) and are in no pair; the batch mean is over requests with a valid candidate. The released code
switches the ``v`` term off for ``f <= 1e-3``; here ``f`` is used as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, zero_masked
from .base import detached_parts, request_mean

__all__ = ["FSLambdaLoss", "lambda_pair_weights"]


def _discount(x: torch.Tensor) -> torch.Tensor:
    """``1 / ln(1 + x)`` for ranks ``x >= 1``."""
    return 1.0 / torch.log1p(x)


def lambda_pair_weights(
    scores: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, *, smooth_fraction: float, topn: int | None
) -> torch.Tensor:
    """LambdaLoss pair weights ``w [B, N, N]`` (no gradient), 0 on pairs with a padded candidate.

    Args:
        scores: ``[B, N]`` stage scores (ranks only).
        label: ``[B, N]`` graded labels (gains).
        mask: ``[B, N]`` bool valid candidates.
        smooth_fraction: ``f`` in ``[0, 1]``.
        topn: ``n_top``, pairs are kept when either rank is within it; ``None`` = all.
    """
    with torch.no_grad():
        dtype = scores.dtype
        n_slots = mask.shape[-1]
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        y = zero_masked(label, mask)
        s_j, s_l = scores.unsqueeze(-1), scores.unsqueeze(-2)
        y_j, y_l = y.unsqueeze(-1), y.unsqueeze(-2)
        slot = torch.arange(n_slots, device=mask.device)
        first = (s_l > s_j) | ((s_l == s_j) & ((y_l < y_j) | ((y_l == y_j) & (slot.view(1, -1) < slot.view(-1, 1)))))
        rank = 1.0 + (first & both).to(dtype).sum(-1)  # [B, N], 1-based among the valid candidates

        low = torch.finfo(dtype).min
        ideal = torch.sort(torch.where(mask, y, torch.full_like(y, low)), dim=-1, descending=True)[0]
        places = torch.arange(1, n_slots + 1, device=mask.device, dtype=dtype)
        in_list = places.unsqueeze(0) <= mask.sum(-1, keepdim=True)
        idcg = (torch.where(in_list, ideal, torch.zeros_like(ideal)) * _discount(places)).sum(-1, keepdim=True)
        gain = torch.where(idcg > 0, y / torch.where(idcg > 0, idcg, torch.ones_like(idcg)), torch.zeros_like(y))

        top = n_slots if topn is None else topn
        r_j, r_l = rank.unsqueeze(-1), rank.unsqueeze(-2)
        diff = (r_j - r_l).abs()
        near_top = (r_j <= top) | (r_l <= top)
        u = torch.where(
            (diff > 0) & near_top,
            (_discount(diff.clamp_min(1.0)) - _discount(diff + 1.0)).abs(),
            torch.zeros_like(diff),
        )
        d_top = torch.where(rank <= top, _discount(rank), torch.zeros_like(rank))
        v = (d_top.unsqueeze(-1) - d_top.unsqueeze(-2)).abs()
        discount = (1.0 - smooth_fraction) * u + smooth_fraction * v
        return (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * discount * both.to(dtype)


class FSLambdaLoss(StageLoss):
    """FS-LambdaLoss: per stage, LambdaLoss-weighted pairwise logistic loss on the graded labels.

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: number of ground-truth candidates (unused; kept for the common interface).
        smooth_fraction: ``f``, weight of the smooth ``v`` discount (default 0.8, as released).
        topn: ``n_top``, pairs are kept when either rank is within it (default 30; ``None`` = all).

    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``stage`` is validated but unused. Returns
    :class:`LossOutput` with parts ``"lambda/<i>"``.

    Raises:
        ValueError / TypeError: invalid hyper-parameters or inputs (see :func:`~.base.check_inputs`).
    """

    method = "fs_lambdaloss"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        smooth_fraction: float = 0.8,
        topn: int | None = 30,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        if not 0.0 <= smooth_fraction <= 1.0:
            raise ValueError(f"fs_lambdaloss: smooth_fraction must be in [0, 1], got {smooth_fraction}")
        if topn is not None and int(topn) <= 0:
            raise ValueError(f"fs_lambdaloss: topn must be positive or None, got {topn}")
        self.smooth_fraction = float(smooth_fraction)
        self.topn = None if topn is None else int(topn)

    def extra_repr(self) -> str:
        return f"keep={list(self.keep)}, smooth_fraction={self.smooth_fraction}, topn={self.topn}"

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        y = zero_masked(label, mask)
        target = (y.unsqueeze(-1) > y.unsqueeze(-2)).to(dtype)
        has = mask.any(-1)
        parts = {}
        total = torch.zeros((), dtype=dtype, device=mask.device)
        for i, x in enumerate(logits):
            s = zero_masked(x, mask)
            w = lambda_pair_weights(s, label, mask, smooth_fraction=self.smooth_fraction, topn=self.topn)
            pair = F.binary_cross_entropy_with_logits(s.unsqueeze(-1) - s.unsqueeze(-2), target, reduction="none")
            parts[f"lambda/{i}"] = request_mean((pair * w).sum((-2, -1)), has)
            total = total + parts[f"lambda/{i}"]
        return LossOutput(loss=total, parts=detached_parts(**parts))

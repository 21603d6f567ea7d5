"""ICC: joint optimisation of the cascade through smooth cut-off indicators (an ensemble score).

Source: Gallagher, Chen, Blanco, Culpepper, "Joint Optimization of Cascade Ranking Models", WSDM 2019
(the ICC framework: each stage's hard cut-off is replaced by a smooth indicator, the stages' scores are
chained into one differentiable ensemble score, and a ranking loss on that score trains all stages jointly).
Here the indicator is logistic and the ranking loss is the pairwise logistic (RankNet) loss, as in the LCRON
paper's ICC baseline (Wang et al., ICML 2025).

Per request, with ``n`` valid candidates, stage scores ``s_i`` and cut-offs ``k_i``:

.. math::

    I_i(j) &= \\sigma\\big((s_{ij} - \\kappa_i) / \\sigma_0\\big), \\quad
        \\kappa_i = k_i\\text{-th largest valid } s_i \\\\
    e_j &= \\sum_{i < N_s - 1} c_i \\Big(\\prod_{l < i} I_l(j)\\Big) (1 - I_i(j))\\, s_{ij}
        + c_{N_s - 1} \\Big(\\prod_{l < N_s - 1} I_l(j)\\Big) I_{N_s - 1}(j)\\, s_{N_s - 1, j} \\\\
    L &= \\frac{1}{n^2} \\sum_{j \\ne l} \\Big(\\mathbb 1[y_j > y_l] + \\tfrac12 \\mathbb 1[y_j = y_l]\\Big)
        \\log\\big(1 + e^{-(e_j - e_l)}\\big)

Behaviour matched to the released implementation (kwai/LCRON ``deep_components/loss/{two,three}_stage/
icc.py``) where the paper is silent:

* ``sigma_0 = 1e-3``; the gradient flows through ``kappa_i`` (the k-th largest score) as well;
* cut-offs ``k_i = keep[min(i, N_s - 2)]``: two-stage ``(keep[0], keep[0])`` = (30, 30), three-stage
  ``(keep[0], keep[1], keep[1])`` = (40, 30, 30) (the last stage reuses the previous stage's cut-off);
* stage scales ``c``: ``(1, 1)`` for two stages, ``2**i`` otherwise (three-stage ``(1, 2, 4)``);
* the mean is over all ``n**2`` ordered slots (the diagonal included in the count).

Deviation (order invariance): the released loss takes pairs "``j`` before ``l`` in list order" with target
``1[y_j > y_l]``. For ``y_j != y_l`` that is the order-free term above. For tied labels it gives
``log(1 + e^{e_j - e_l})`` for whichever of the two happens to come first, i.e. it depends on slot order
(RecFlow's lower groups all share one label). We give each tied pair the RankNet target 1/2 (Burges 2010),
which equals the mean of the released value over the two orders of the pair: on the grouped RecFlow layout
our value is the released value averaged over the orders within each group, not equal to it for one given
order. No order-invariant formulation can equal the released one there.

Masks (the released code assumes all candidates valid): padded candidates are excluded from the cut-offs,
the ensemble and the pairs; ``kappa_i`` uses ``min(k_i, n)``; the batch mean is over requests with a valid
candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, stage_ints, zero_masked
from .base import detached_parts, request_mean

__all__ = ["ICCLoss", "kth_largest"]


def kth_largest(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``min(k, n)``-th largest valid score of each request, ``[B, 1]`` (0 for a request with none).

    Differentiable (the gradient goes to the candidate holding that value). Order-invariant in value.
    """
    low = torch.finfo(scores.dtype).min
    sorted_scores = torch.sort(torch.where(mask, scores, torch.full_like(scores, low)), dim=-1, descending=True)[0]
    n = mask.sum(-1, keepdim=True)
    idx = (n.clamp(max=k) - 1).clamp_min(0)
    kth = sorted_scores.gather(-1, idx)
    return torch.where(n > 0, kth, torch.zeros_like(kth))


class ICCLoss(StageLoss):
    """ICC joint cascade loss (see the module docstring for the formula and released-code conventions).

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: number of ground-truth candidates (unused; kept for the common interface).
        sigma: temperature of the logistic cut-off indicator (default 1e-3).
        cutoffs: per stage, the rank ``k_i`` whose score is the cut-off (default ``keep[min(i, N_s - 2)]``).
        stage_scale: per stage, the factor ``c_i`` of its score in the ensemble (default ``(1, 1)`` for two
            stages, ``2**i`` otherwise).

    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``stage`` is validated but unused. Returns
    :class:`LossOutput` with the part ``"icc"``.

    Raises:
        ValueError / TypeError: invalid hyper-parameters or inputs (see :func:`~.base.check_inputs`).
    """

    method = "icc"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        sigma: float = 1e-3,
        cutoffs: Sequence[int] | None = None,
        stage_scale: Sequence[float] | None = None,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        n = self.num_stages
        if not sigma > 0:
            raise ValueError(f"icc: sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        if cutoffs is None:
            cutoffs = [self.keep[max(0, min(i, n - 2))] for i in range(n)]
        self.cutoffs = stage_ints("icc", "cutoffs", cutoffs, n, minimum=1)
        if stage_scale is None:
            stage_scale = (1.0, 1.0) if n == 2 else tuple(2.0**i for i in range(n))
        stage_scale = tuple(float(c) for c in stage_scale)
        if len(stage_scale) != n:
            raise ValueError(f"icc: stage_scale must hold {n} numbers (one per stage), got {list(stage_scale)}")
        self.stage_scale = stage_scale

    def extra_repr(self) -> str:
        return (
            f"keep={list(self.keep)}, sigma={self.sigma}, cutoffs={list(self.cutoffs)}, "
            f"stage_scale={list(self.stage_scale)}"
        )

    def ensemble(self, logits: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The ICC ensemble score ``e`` ``[B, N]`` (0 at padded slots)."""
        last = len(logits) - 1
        e = torch.zeros_like(logits[0])
        reach = torch.ones_like(logits[0])  # prod_{l < i} I_l
        for i, x in enumerate(logits):
            s = zero_masked(x, mask)
            ind = torch.sigmoid((s - kth_largest(s, mask, self.cutoffs[i])) / self.sigma)
            gate = ind if i == last else 1.0 - ind
            e = e + self.stage_scale[i] * reach * gate * s
            reach = reach * ind
        return zero_masked(e, mask)

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        e = self.ensemble(logits, mask)
        y = zero_masked(label, mask)
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        off_diag = ~torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
        y_j, y_l = y.unsqueeze(-1), y.unsqueeze(-2)
        weight = ((y_j > y_l).to(dtype) + 0.5 * (y_j == y_l).to(dtype)) * (both & off_diag).to(dtype)
        pair = F.softplus(e.unsqueeze(-2) - e.unsqueeze(-1))  # [b, j, l] = log(1 + exp(-(e_j - e_l)))
        n = mask.sum(-1).to(dtype)
        per_request = (weight * pair).sum((-2, -1)) / (n * n).clamp_min(1.0)
        loss = request_mean(per_request, mask.any(-1))
        return LossOutput(loss=loss, parts=detached_parts(icc=loss))

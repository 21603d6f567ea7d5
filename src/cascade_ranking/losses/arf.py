"""ARF and ARF-v2: per-stage relaxed top-k recall on NeuralSort, plus an uncertainty-weighted global term.

Source: Wang et al., "Adaptive Neural Ranking Framework: Toward Maximized Business Goal for Cascade Ranking
Systems" (ARF), arXiv 2310.10462, 2023: each stage optimises a relaxation of its own top-k recall (the
ground truth should fall in the stage's top ``m = keep[i]``), computed on NeuralSort permutation matrices
(Grover et al., ICLR 2019), together with a global full-permutation loss, the two balanced by a learnable
uncertainty weight (Kendall et al., CVPR 2018). ARF-v2 is the variant of the LCRON paper's baselines
(Wang et al., ICML 2025) whose relaxed term is two-sided and column-normalised (the form of LCRON's
``L_single``).

Per stage ``i`` and request with ``n`` valid candidates (``N`` slots), ``P = NeuralSort(s_i, tau)``,
``Y = NeuralSort(label, 1e-4)``, ``g = gt_num``, ``y+(j) = sum_{r<=g} Y[r, j]``,
``y-(j) = sum_{r>g} Y[r, j]``, ``c(j) = sg(sum_r P[r, j])``, ``eps = 1e-6``:

.. math::

    L_{relax}^{ARF} &= \\mathbb 1[n > m]\\,\\frac1n \\sum_j -y^+(j)
        \\log\\Big(\\frac1m \\sum_{r \\le m} P[r, j] + \\epsilon\\Big) \\\\
    L_{relax}^{v2} &= \\mathbb 1[n > m]\\,\\frac1n \\sum_j
        -y^+(j) \\log\\Big(\\frac{\\sum_{r \\le m} P[r, j]}{c(j) + \\epsilon} + \\epsilon\\Big)
        - y^-(j) \\log\\Big(\\frac{\\sum_{r > m} P[r, j]}{c(j) + \\epsilon} + \\epsilon\\Big) \\\\
    L_{global} &= \\mathbb 1[n = N]\\,\\frac1{n^2} \\sum_{r, j} -Y[r, j] \\log(P[r, j] + \\epsilon) \\\\
    L_i &= \\frac{\\overline{L_{global}}}{2 \\sigma_i^2} + \\overline{L_{relax}} + \\log |\\sigma_i|,
        \\qquad L = \\sum_i L_i

(overlines: batch means over the requests with a valid candidate; ``sigma_i`` learnable, init 1).

Behaviour matched to the released implementation (kwai/LCRON ``deep_components/loss/{two,three}_stage/
arf.py`` and their ``ArfLossModel``), where the paper is silent: ``tau = 200``, ``m = keep[i]`` (the
``support_m`` of each stage), ``y+`` over the top ``gt_num`` places, the global term over the full list and
only for requests whose list is complete, the relaxed term only for requests with more than ``m``
candidates (both count as 0 in the batch mean otherwise), only the global term is weighted (the released
module's second weight is never used). With every candidate valid the value is the released one, and it
never depends on slot order (NeuralSort is permutation-equivariant). Padded candidates take no place in
``P`` or ``Y`` (masked NeuralSort), contribute nothing and get zero gradient; the per-request means are over
the valid candidates; ``log |sigma_i|`` (equal to the released ``log sigma_i`` for positive weights) is
dropped for a batch with no valid candidate, which therefore gives exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..sorting import neural_sort, split_column_sums
from ..types import LossOutput
from ._common import StageLoss
from .base import EPS, detached_parts, label_permutation, request_mean

__all__ = ["ARFLoss", "ARFv2Loss"]


class ARFLoss(StageLoss):
    """ARF loss for an N-stage cascade, one learnable weight ``sigma_i`` per stage (init 1).

    Args:
        keep: candidates each stage keeps, retrieval first; ``m_i = keep[i]`` is stage ``i``'s support.
        gt_num: ``g``, the number of ground-truth candidates (default 10).
        tau: NeuralSort temperature of the stage scores (default 200, as released).

    The module's parameter ``sigma`` (``[N_s]``, float32) must be optimised together with the stage models.
    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``stage`` is validated but unused. Returns
    :class:`LossOutput` with parts ``"global/<i>"``, ``"relax/<i>"`` and ``"sigma/<i>"``.

    Raises:
        ValueError / TypeError: invalid hyper-parameters or inputs (see :func:`~.base.check_inputs`).
    """

    method = "arf"

    def __init__(self, *, keep: Sequence[int], gt_num: int = 10, tau: float = 200.0) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        if not tau > 0:
            raise ValueError(f"{self.method}: tau must be positive, got {tau}")
        self.tau = float(tau)
        self.sigma = torch.nn.Parameter(torch.ones(self.num_stages))

    def extra_repr(self) -> str:
        return f"keep={list(self.keep)}, gt_num={self.gt_num}, tau={self.tau}"

    def _relax(self, p: torch.Tensor, m: int, y: torch.Tensor) -> torch.Tensor:
        """Per-candidate relaxed top-``m`` term ``[B, N]`` (ARF: one-sided, mean of the top ``m`` places)."""
        y_pos = y[..., : self.gt_num, :].sum(-2)
        return -y_pos * torch.log(split_column_sums(p, m)[0] / m + EPS)

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        n_valid = mask.sum(-1)
        has = n_valid > 0
        valid = mask.to(dtype)
        inv_n = 1.0 / n_valid.clamp_min(1).to(dtype)
        complete = (n_valid == mask.shape[-1]).to(dtype)
        y = label_permutation(label, mask, dtype)  # [B, N, N], no gradient
        sigma = self.sigma.to(dtype)
        any_valid = mask.any().to(dtype)
        parts = {}
        total = torch.zeros((), dtype=dtype, device=mask.device)
        for i, (x, m) in enumerate(zip(logits, self.keep, strict=True)):
            p = neural_sort(x, tau=self.tau, mask=mask)
            relax = (self._relax(p, m, y) * valid).sum(-1) * inv_n * (n_valid > m).to(dtype)
            glob = (-y * torch.log(p + EPS)).sum((-2, -1)) * inv_n * inv_n * complete
            l_relax, l_global = request_mean(relax, has), request_mean(glob, has)
            total = total + l_global / (2.0 * sigma[i] ** 2) + l_relax + any_valid * torch.log(sigma[i].abs())
            parts.update({f"global/{i}": l_global, f"relax/{i}": l_relax, f"sigma/{i}": self.sigma[i]})
        return LossOutput(loss=total, parts=detached_parts(**parts))


class ARFv2Loss(ARFLoss):
    """ARF-v2: ARF with a two-sided, column-normalised relaxed term (LCRON's ``L_single``, support ``m``).

    Same arguments, parameters, parts and errors as :class:`ARFLoss`.
    """

    method = "arf_v2"

    def _relax(self, p: torch.Tensor, m: int, y: torch.Tensor) -> torch.Tensor:
        y_pos = y[..., : self.gt_num, :].sum(-2)
        y_neg = y[..., self.gt_num :, :].sum(-2)
        top, rest = split_column_sums(p, m)
        denom = (top + rest).detach() + EPS
        inside, outside = top / denom, rest / denom  # soft_topk_membership(p, m) and its complement
        return -y_pos * torch.log(inside + EPS) - y_neg * torch.log(outside + EPS)

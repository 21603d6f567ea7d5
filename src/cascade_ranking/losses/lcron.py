r"""LCRON: Learning Cascade Ranking as One Network (Wang et al., ICML 2025), for an N-stage cascade.

Notation (per request, ``V`` = its valid candidates, ``n = |V|``, ``g = gt_num``, ``eps = 1e-6``):

.. math::

    Y &= \mathrm{NeuralSort}(\text{label}, 10^{-4}),\quad
    y^+(j) = \sum_{r \le g} Y[r, j],\quad y^-(j) = \sum_{r > g} Y[r, j] \\
    P_i &= \mathrm{NeuralSort}(s_i, \tau),\quad
    c_i(j) = \mathrm{sg}\big(\textstyle\sum_r P_i[r, j]\big) \\
    a_i(j) &= \frac{\sum_{r \le q_i} P_i[r, j]}{c_i(j) + \epsilon},\quad
    b_i(j) = \frac{\sum_{r > q_i} P_i[r, j]}{c_i(j) + \epsilon}
    \qquad (p_i = a_i,\ \tilde p_i = 1 - b_i) \\
    L_{e2e} &= \frac1n \sum_{j \in V} -y^+ \log\big(\textstyle\prod_i a_i + \epsilon\big)
        - \mathrm{clip}(1 - y^+, 0, 1) \log\big(1 - \textstyle\prod_i (1 - b_i) + \epsilon\big) \\
    L_{single,i} &= \mathbb 1[n > q_i]\, \frac1n \sum_{j \in V} -y^+ \log(a_i + \epsilon)
        - y^- \log(b_i + \epsilon) \\
    L &= L_{e2e} + \sum_i \frac{L_{single,i}}{2 w_i^2} + \log \prod_i |w_i|

``L_e2e`` is the paper's end-to-end surrogate: the negative log of its lower bound on the probability that a
ground-truth item survives every stage (the product of the stages' soft top-``q`` memberships), with the
symmetric term for the other items; ``L_single,i`` is its per-stage auxiliary loss, which tightens that
bound; the ``w_i`` are learnable loss weights (uncertainty weighting in the style of Kendall et al. 2018).

Behaviour matched to the released implementation (kwai/LCRON, ``deep_components/loss/{two,three}_stage/
lcron.py``) where the paper is silent; with every candidate valid the value equals the released one:

* ``q_i = gt_num`` for every stage (``q="gt_num"``, the default); ``q="keep"`` uses ``keep[i]`` instead, the
  paper's formulation (top-``k_i`` membership of stage ``i``), for both ``L_e2e`` and the support of
  ``L_single,i`` (its indicator then reads ``n > keep[i]``).
* The column sums ``c_i`` are detached; ``eps = 1e-6`` is added to ``c_i`` and inside every ``log``.
* The positive branch of ``L_e2e`` uses ``a_i``, the negative branch ``1 - b_i`` (equal to ``a_i`` up to
  ``eps``, but its gradient flows through the places below ``q_i``).
* ``Y`` is the NeuralSort matrix of the labels at ``tau = 1e-4`` (ties share their places' mass). The
  released *three*-stage script binarises it (``Y > 1e-3``), which gives each candidate of a tied label group
  ``y^-`` = the number of places of its group below ``g`` instead of 1. The default
  ``label_threshold="released"`` reproduces both scripts: no threshold for two stages, ``1e-3`` for three or
  more; pass ``None`` for the soft matrix of DESIGN.md at any depth, or a float to choose.
* ``L_single,i`` of a request with ``n <= q_i`` valid candidates is 0, but that request still counts in the
  batch mean (the released code averages over the whole batch).

Deviations, all invisible when every candidate is valid:

* Padded candidates contribute nothing (the released code adds ``-log(eps)`` per padded slot to the negative
  branch of ``L_e2e``) and the per-request mean is over the ``n`` valid candidates, not all ``N`` slots.
  NeuralSort is taken over the valid candidates only (:func:`cascade_ranking.sorting.neural_sort`), so
  masking a candidate equals deleting it.
* The batch mean is over requests with at least one valid candidate; a batch with none gives exactly 0 (the
  ``log |w_i|`` term included) with zero gradients.
* ``log prod_i |w_i|`` instead of ``log prod_i w_i``: the same value for positive weights, finite otherwise.
* The argument of ``log(1 - prod_i(1 - b_i) + eps)`` is clipped at 0 before ``eps`` is added: it can only
  be negative through rounding (``b_i < 1``), where the released code may give NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..sorting import neural_sort, split_column_sums
from ..types import LossOutput
from ._common import StageLoss
from .base import EPS, detached_parts, label_permutation, request_mean

__all__ = ["LCRONLoss", "lcron_terms"]

_Q_CHOICES = ("gt_num", "keep")


def _membership(p: torch.Tensor, q: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)``: mass of the top ``q`` places and of the places below, over the detached column sum."""
    top, rest = split_column_sums(p, q)  # one batched matmul over P (and one for its gradient)
    denom = (top + rest).detach() + eps
    return top / denom, rest / denom


def lcron_terms(
    logits: Sequence[torch.Tensor],
    *,
    label: torch.Tensor,
    mask: torch.Tensor,
    gt_num: int,
    q: Sequence[int],
    tau: float = 50.0,
    label_threshold: float | None = None,
    eps: float = EPS,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The unweighted LCRON terms ``(L_e2e, [L_single,0, ..., L_single,N-1])`` (see the module docstring).

    Args:
        logits: one ``[B, N]`` float tensor per stage, retrieval first (already validated by the caller).
        label: ``[B, N]`` float graded relevance, higher is better.
        mask: ``[B, N]`` bool, ``True`` at valid candidates.
        gt_num: ``g``, the number of ground-truth places.
        q: ``q_i`` per stage (top-``q_i`` membership and support of ``L_single,i``).
        tau: NeuralSort temperature of the stage scores.
        label_threshold: if set, ``Y`` is binarised as ``Y > label_threshold``.
        eps: added to the column sums and inside the logs.

    Returns:
        Scalar tensors in the promoted dtype of ``logits``; each is 0 for a batch with no valid candidate.

    Raises:
        ValueError: ``logits`` is empty.
    """
    if len(logits) == 0:
        raise ValueError("logits must hold one [B, N] tensor per stage, got none")
    dtype = functools.reduce(torch.promote_types, [x.dtype for x in logits])
    n_valid = mask.sum(-1)  # [B]
    has_valid = n_valid > 0
    m = mask.to(dtype)
    inv_n = 1.0 / n_valid.clamp_min(1).to(dtype)  # [B]

    y = label_permutation(label, mask, dtype)  # [B, N, N], no gradient
    if label_threshold is not None:
        y = (y > label_threshold).to(dtype)
    y_pos, y_neg = split_column_sums(y, gt_num)  # [B, N] each; zero at padded columns

    joint_in: torch.Tensor | None = None  # prod_i a_i
    joint_out: torch.Tensor | None = None  # prod_i (1 - b_i)
    singles = []
    for x, q_i in zip(logits, q, strict=True):
        p = neural_sort(x.to(dtype), tau=tau, mask=mask)
        a, b = _membership(p, q_i, eps)
        joint_in = a if joint_in is None else joint_in * a
        joint_out = 1.0 - b if joint_out is None else joint_out * (1.0 - b)
        per_cand = -y_pos * torch.log(a + eps) - y_neg * torch.log(b + eps)
        per_req = (per_cand * m).sum(-1) * inv_n * (n_valid > q_i).to(dtype)
        singles.append(request_mean(per_req, has_valid))

    assert joint_in is not None and joint_out is not None  # logits is not empty
    neg_target = (1.0 - y_pos).clamp(0.0, 1.0)
    per_cand = -y_pos * torch.log(joint_in + eps) - neg_target * torch.log((1.0 - joint_out).clamp_min(0.0) + eps)
    l_e2e = request_mean((per_cand * m).sum(-1) * inv_n, has_valid)
    return l_e2e, singles


class LCRONLoss(StageLoss):
    """LCRON loss for an N-stage cascade, with one learnable weight ``w_i`` per stage (init 1).

    Called as ``loss_fn(logits, label=, mask=, stage=)`` (see :mod:`cascade_ranking.losses.base`); ``stage``
    is validated but not used (LCRON learns from the labels). The module's parameters (the weights) must be
    optimised together with the stage models, and moved with ``.to(device)`` like them.

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: ``g``, the number of ground-truth candidates (default 10).
        tau: NeuralSort temperature of the stage scores (default 50, as released).
        q: ``"gt_num"`` (default, as released: ``q_i = g`` for every stage) or ``"keep"`` (``q_i = keep[i]``,
            the paper's formulation).
        label_threshold: ``"released"`` (default: ``None`` for two stages, ``1e-3`` for three or more, as
            the released scripts), ``None`` (soft label matrix) or a float threshold binarising it.

    Returns (when called):
        :class:`LossOutput` with ``loss`` (scalar) and ``parts``: ``"l_e2e"``, ``"l_single/<i>"`` and
        ``"weight/<i>"`` for each stage ``i`` (0 = retrieval).

    Raises:
        ValueError: invalid hyper-parameters; at call time, wrong number of stages or shapes (see
            :func:`cascade_ranking.losses.base.check_inputs`).
        TypeError: non-float logits or labels, non-list logits.

    Reference:
        Wang et al., "Learning Cascade Ranking as One Network", ICML 2025 (arXiv 2503.09492).
    """

    method = "lcron"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        tau: float = 50.0,
        q: str = "gt_num",
        label_threshold: float | str | None = "released",
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        keep = self.keep
        if not tau > 0:
            raise ValueError(f"lcron: tau must be positive, got {tau}")
        if q not in _Q_CHOICES:
            raise ValueError(f"lcron: q must be one of {_Q_CHOICES}, got {q!r}")
        if label_threshold == "released":
            label_threshold = 1e-3 if len(keep) >= 3 else None
        if label_threshold is not None and (isinstance(label_threshold, str) or not 0 <= label_threshold < 1):
            raise ValueError(f"lcron: label_threshold must be None or in [0, 1), got {label_threshold}")
        self.tau = float(tau)
        self.q = q
        self.label_threshold = label_threshold
        self.weights = torch.nn.Parameter(torch.ones(len(keep)))

    @property
    def q_per_stage(self) -> tuple[int, ...]:
        return self.keep if self.q == "keep" else (self.gt_num,) * len(self.keep)

    def extra_repr(self) -> str:
        return (
            f"keep={list(self.keep)}, gt_num={self.gt_num}, tau={self.tau}, q={self.q!r}, "
            f"label_threshold={self.label_threshold}"
        )

    def _compute(
        self, logits: list[torch.Tensor], label: torch.Tensor, mask: torch.Tensor, stage: torch.Tensor
    ) -> LossOutput:
        l_e2e, singles = lcron_terms(
            logits,
            label=label,
            mask=mask,
            gt_num=self.gt_num,
            q=self.q_per_stage,
            tau=self.tau,
            label_threshold=self.label_threshold,
        )
        w = self.weights.to(l_e2e.dtype)
        l_single = torch.stack(singles)
        any_valid = mask.any().to(l_e2e.dtype)  # an all-masked batch: exactly 0, zero gradients
        loss = l_e2e + (l_single / (2.0 * w**2)).sum() + any_valid * torch.log(w.abs()).sum()
        parts = {"l_e2e": l_e2e}
        parts.update({f"l_single/{i}": v for i, v in enumerate(singles)})
        parts.update({f"weight/{i}": self.weights[i] for i in range(len(self.keep))})
        return LossOutput(loss=loss, parts=detached_parts(**parts))

r"""RankTower's hybrid loss: distillation, SoftSort sorting and (AM-)Rankmax, over full-stage samples.

Source: Yan & Li, "RankTower: A Synergistic Framework for Enhancing Two-Tower Pre-Ranking Model", arXiv
2407.12385, Sec. 4 (sample spaces Sec. 4.1, hard labels Sec. 4.2, eq. 14-20 of Sec. 4.3, hyper-parameters
Sec. 5.1.4). The full paper is ``../shared/seeds/004_77323e5ce7e6ee9f.txt``. The pre-ranking model learns from
samples of the *whole* cascade, with a different objective per sample space.

**Sample spaces** (per request, from the funnel position ``stage``; ``T`` = the top position):

* *impression samples* ``D_I``: valid candidates with ``stage >= T`` (what the logged system exposed: RecFlow
  ``rank_pos``/``rerank_pos``, the rated items of the full-stage MovieLens data). By default ``T`` is, per
  request, the highest funnel position among its valid candidates; pass ``top_position`` to fix ``T``;
* *random samples* ``D_R``: valid candidates at position ``<= random_position`` (default 0) that are not
  impressions;
* *candidate samples* ``D_C``: every other valid candidate (retrieved or ranked, never exposed).

**Terms** (``z`` = pre-ranking logits, ``y`` = hard labels, ``p`` = soft labels), each per request:

.. math::

    L_{distill} &= -\sum_{i \in D_I} p_i \log \frac{e^{z_i}}{\sum_{j \in D_I} e^{z_j}}
        && \text{(eq. 14)} \\
    \mathrm{SoftSort}_\tau(s)[r, j] &= \mathrm{softmax}_{j}\big(-(\mathrm{sort}(s)_r - s_j)^2 / \tau\big)
        && \text{(eq. 15, squared distance, Sec. 5.1.4)} \\
    L_{sort} &= -\sum_{r, j} \mathrm{SoftSort}_\tau(y)[r, j] \log \mathrm{SoftSort}_\tau(z)[r, j]
        \quad \text{over } D_I \cup D_C && \text{(eq. 16)} \\
    L_{rankmax} &= \sum_{j: y_j > 0} \log \sum_{i} (z_i - z_j + 1)_+
        && \text{(eq. 17, } i = j \text{ included: the term is 1)} \\
    m(i, j) &= \alpha\, \mathbb 1[y_i = 0] + \delta(y_i, y_j),\quad \delta = \delta_0 + \beta |y_j - y_i|^{p}
        && \text{(eq. 18)} \\
    L_{AM} &= \sum_{j: y_j > 0} \log\Big(1 + \sum_{i: y_i < y_j} (z_i - z_j + m(i, j))_+\Big)
        && \text{(eq. 19)} \\
    L &= \lambda_1 L_{distill} + \lambda_2 L_{sort} + \lambda_3 L_{AM} && \text{(eq. 20)}

over all valid samples for (AM-)Rankmax. The paper's Sec. 5.1.4 uses ``delta = 1`` (``delta_0 = 1, beta = 0``,
our defaults) and searches ``alpha`` in ``[2, 5]`` (default 2, the low end; the benchmark's grid searches it).

**Where we differ from the printed formulas, and why:**

* eq. 19 as printed is ``log sum_{i: y_i < y_j} (.)_+``, which is ``log 0 = -inf`` once every lower item is
  beyond its margin. We keep eq. 17's ``i = j`` term (``(z_j - z_j + 1)_+ = 1``) inside the log, so the loss
  is ``>= 0``, exactly 0 when every margin is met, and eq. 19 with binary labels, ``alpha = 0``, ``delta = 1``
  differs from eq. 17 only by not comparing positives with each other (as the paper states).
* The indicator ``1[y_i = 0]`` of eq. 18 is written as "``i`` is not an impression": under the paper's hard
  labels (Sec. 4.2: impressions get the impression label 1 plus their feedback, candidate and random samples
  get 0) they are the same set; the funnel position keeps the meaning on datasets whose negatives carry
  graded labels (RecFlow, :mod:`~cascade_ranking.datasets.full_stage`: position ``p`` has label ``p + 1``).
* The paper sums over samples within a list and does not say how lists are combined; we average the
  per-request values over the requests where the term has a sample (distillation: an impression; sorting: a
  sample of ``D_I u D_C``; Rankmax: an anchor ``y_j > 0`` with a pair). A batch with none gives exactly 0 with
  zero gradients. Padded candidates contribute nothing and get exactly zero gradient; nothing depends on slot
  order. With several stages every stage's terms are computed on its own logits and summed.
* ``SoftSort_tau(y)``, the target of eq. 16, uses the same ``tau`` as the scores (the paper's single symbol);
  ``target_tau`` sets it apart. ``log SoftSort(z)`` is a log-softmax (no ``eps``).
* Soft labels ``p`` are used as they are (eq. 14: not renormalised); they must be ``>= 0`` at impressions.
  Without ``soft_label`` (a dataset without a ranking model's predictions) the hard label plays ``p``, which
  makes eq. 14 the Softmax loss of the impressions.

**Values the paper does not give** (ours): ``lambda = (0.1, 0.1, 1)`` and SoftSort ``tau = 1``. The lambdas come
from a validation sweep of our earlier formulation on the MovieLens-100K pre-ranking data
(``docs/results/movielens-prerank/validation_sweep.md``: distillation and sorting at weight 1 each cost
validation Recall@20; the sweep found ``tau`` 1 and 10 within noise of each other).

Distillation variants for the paper's Table 4 (``distillation=``): ``"softmax"`` (eq. 14, the paper's),
``"weighted_logloss"`` and ``"pairwise_logloss"`` (:func:`weighted_logloss_terms`,
:func:`pairwise_logloss_terms`); "no distillation" is ``lambdas[0] = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, zero_masked
from .base import detached_parts, request_mean

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DELTA",
    "DEFAULT_LAMBDAS",
    "DEFAULT_SORT_TAU",
    "DISTILLATIONS",
    "AMRankmaxLoss",
    "RankTowerDistillLoss",
    "RankTowerLoss",
    "RankTowerSortLoss",
    "RankmaxLoss",
    "SampleSpaces",
    "adaptive_margin",
    "aggregate_hard_labels",
    "distillation_terms",
    "pairwise_logloss_terms",
    "rankmax_terms",
    "sample_spaces",
    "soft_sort_log_probs",
    "sorting_terms",
    "weighted_logloss_terms",
]


#: ``(lambda_1, lambda_2, lambda_3)`` of the hybrid loss (distillation, sorting, AM-Rankmax); ours (see above).
DEFAULT_LAMBDAS: tuple[float, float, float] = (0.1, 0.1, 1.0)
#: SoftSort temperature ``tau`` of the sorting loss (eq. 15); ours (the paper gives none).
DEFAULT_SORT_TAU: float = 1.0
#: AM-Rankmax extra margin ``alpha`` of a positive over a ``y = 0`` sample (eq. 18); the paper searches [2, 5].
DEFAULT_ALPHA: float = 2.0
#: AM-Rankmax constant margin ``delta`` (eq. 18); the paper's value.
DEFAULT_DELTA: float = 1.0
#: Distillation losses of the paper's Table 4 (``"softmax"`` is eq. 14, the paper's choice).
DISTILLATIONS = ("softmax", "weighted_logloss", "pairwise_logloss")


# ------------------------------------------------------------------------------------------------------
# functional core
# ------------------------------------------------------------------------------------------------------
class SampleSpaces(NamedTuple):
    """RankTower's full-stage sample spaces, each ``[B, N]`` bool (disjoint, their union = the valid mask)."""

    impression: torch.Tensor
    candidate: torch.Tensor
    random: torch.Tensor


def sample_spaces(
    stage: torch.Tensor, mask: torch.Tensor, *, top_position: int | None = None, random_position: int = 0
) -> SampleSpaces:
    """Split the valid candidates into impression, candidate and random samples (see the module docstring).

    Args:
        stage: ``[B, N]`` int funnel positions (values at padded slots are ignored).
        mask: ``[B, N]`` bool, valid candidates.
        top_position: impressions are at ``stage >= top_position``; ``None``: per request, the highest
            position among its valid candidates.
        random_position: random samples are the non-impressions at ``stage <= random_position``.
    """
    if top_position is None:
        top = torch.where(mask, stage, torch.full_like(stage, -1)).amax(-1, keepdim=True)  # [B, 1]
    else:
        top = torch.full_like(stage[..., :1], int(top_position))
    impression = mask & (stage >= top)
    random = mask & ~impression & (stage <= random_position)
    candidate = mask & ~impression & ~random
    return SampleSpaces(impression=impression, candidate=candidate, random=random)


def _masked_log_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the ``True`` entries of the last axis; exactly 0 (and zero gradient) elsewhere."""
    low = torch.finfo(x.dtype).min
    out = torch.log_softmax(torch.where(mask, x, torch.full_like(x, low)), dim=-1)
    return torch.where(mask, out, torch.zeros_like(out))


def distillation_terms(
    scores: torch.Tensor, teacher: torch.Tensor, impression: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax distillation on impression samples (eq. 14), per request.

    Args:
        scores: ``[B, N]`` float student logits ``z``.
        teacher: ``[B, N]`` float soft labels ``p >= 0`` (used as they are); only impressions are read.
        impression: ``[B, N]`` bool, the sample space ``D_I``.

    Returns:
        ``(loss [B], has [B] bool)``: ``-sum_{i in D_I} p_i log softmax_{D_I}(z)_i``; 0 and ``False`` for a
        request without impressions.
    """
    p = zero_masked(teacher, impression).detach()
    per = -(p * _masked_log_softmax(zero_masked(scores, impression), impression)).sum(-1)
    return per, impression.any(-1)


def weighted_logloss_terms(
    scores: torch.Tensor, teacher: torch.Tensor, impression: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted-logloss distillation (Table 4's pointwise alternative), per request.

    The weighted logistic regression of Covington et al. (RecSys 2016, Sec. 4.3; the paper's ref. [6]) with
    the teacher's value as the positive weight and unit negative weight, per impression ``i``:
    ``-(p_i log sigma(z_i) + log(1 - sigma(z_i)))``, minimised at ``e^{z_i} = p_i`` (the odds learn ``p``);
    averaged over the request's impressions. The paper names the loss only; this weighting is ours.

    Args:
        scores: ``[B, N]`` float student logits ``z``.
        teacher: ``[B, N]`` float soft labels ``p >= 0``; only impressions are read.
        impression: ``[B, N]`` bool.

    Returns:
        ``(loss [B], has [B] bool)``; 0 and ``False`` for a request without impressions.
    """
    z = zero_masked(scores, impression)
    p = zero_masked(teacher, impression).detach()
    per_item = -(p * F.logsigmoid(z) + F.logsigmoid(-z))
    count = impression.sum(-1)
    per = zero_masked(per_item, impression).sum(-1) / count.clamp_min(1).to(z.dtype)
    return per, count > 0


def pairwise_logloss_terms(
    scores: torch.Tensor, teacher: torch.Tensor, impression: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise-logloss distillation (Table 4): RankNet (Burges et al., ICML 2005) on the teacher's order.

    For every pair of impressions with ``p_a > p_b`` (ties form no pair): ``log(1 + exp(-(z_a - z_b)))``,
    averaged over the request's pairs.

    Returns:
        ``(loss [B], has [B] bool)``; 0 and ``False`` for a request without an ordered pair.
    """
    z = zero_masked(scores, impression)
    p = zero_masked(teacher, impression).detach()
    pair = impression.unsqueeze(-1) & impression.unsqueeze(-2) & (p.unsqueeze(-1) > p.unsqueeze(-2))
    diff = z.unsqueeze(-1) - z.unsqueeze(-2)  # [B, a, b] = z_a - z_b
    cost = torch.where(pair, F.softplus(-diff), torch.zeros_like(diff)).sum((-2, -1))
    count = pair.sum((-2, -1))
    return cost / count.clamp_min(1).to(z.dtype), count > 0


_DISTILL_TERMS = {
    "softmax": distillation_terms,
    "weighted_logloss": weighted_logloss_terms,
    "pairwise_logloss": pairwise_logloss_terms,
}


def soft_sort_log_probs(scores: torch.Tensor, mask: torch.Tensor, *, tau: float) -> torch.Tensor:
    """``log SoftSort_tau(s)`` with squared distance (eq. 15), ``[B, N, N]``, descending, masked.

    Row ``r < n`` (``n`` = valid count) over valid columns ``j`` is ``log_softmax_j(-(sort(s)_r - s_j)^2 / tau)``;
    entries of rows ``r >= n`` and of padded columns are 0. ``exp`` of it equals
    :func:`cascade_ranking.operators.soft_sort` with ``power=2`` on valid entries.
    """
    s = zero_masked(scores, mask)
    low = torch.finfo(s.dtype).min
    sorted_s = torch.sort(torch.where(mask, s, torch.full_like(s, low)), dim=-1, descending=True)[0]
    row_valid = torch.arange(s.shape[-1], device=s.device) < mask.sum(-1, keepdim=True)  # [B, N]
    sorted_s = torch.where(row_valid, sorted_s, torch.zeros_like(sorted_s))
    logits = -(sorted_s.unsqueeze(-1) - s.unsqueeze(-2)).square() / tau  # [B, r, j]
    keep = row_valid.unsqueeze(-1) & mask.unsqueeze(-2)
    return _masked_log_softmax(logits, keep)


def sorting_terms(
    scores: torch.Tensor,
    label: torch.Tensor,
    space: torch.Tensor,
    *,
    tau: float = DEFAULT_SORT_TAU,
    target_tau: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SoftSort sorting loss (eq. 15-16) on the candidates of ``space``, per request.

    Args:
        scores: ``[B, N]`` float logits ``z``.
        label: ``[B, N]`` float hard labels ``y`` (tied labels share their rows' mass).
        space: ``[B, N]`` bool (``D_I u D_C`` in the hybrid).
        tau: SoftSort temperature of the scores.
        target_tau: SoftSort temperature of the labels; ``None`` = ``tau`` (the paper's eq. 16).

    Returns:
        ``(loss [B], has [B] bool)``: ``-sum_{r, j} SoftSort(y)[r, j] log SoftSort(z)[r, j]`` over ``space``;
        0 and ``False`` for an empty space.
    """
    with torch.no_grad():
        target = soft_sort_log_probs(label.to(scores.dtype), space, tau=tau if target_tau is None else target_tau)
        keep = (torch.arange(space.shape[-1], device=space.device) < space.sum(-1, keepdim=True)).unsqueeze(-1)
        target = torch.where(keep & space.unsqueeze(-2), target.exp(), torch.zeros_like(target))
    log_p = soft_sort_log_probs(scores, space, tau=tau)
    return -(target * log_p).sum((-2, -1)), space.any(-1)


def adaptive_margin(
    label: torch.Tensor,
    impression: torch.Tensor,
    *,
    alpha: float,
    delta: float,
    beta: float = 0.0,
    power: float = 1.0,
) -> torch.Tensor:
    """AM-Rankmax margins (eq. 18), ``[B, N, N]``: ``m[b, j, i]`` for anchor ``j`` and lower item ``i``.

    ``m = alpha 1[i not an impression] + delta + beta |y_j - y_i|^power``. Only entries with ``y_i < y_j``
    between valid candidates are used by :func:`rankmax_terms`.
    """
    lower_unseen = (~impression).to(label.dtype).unsqueeze(-2).expand(*label.shape, label.shape[-1])
    gap = (label.unsqueeze(-1) - label.unsqueeze(-2)).abs()
    out = alpha * lower_unseen + delta
    if beta:
        out = out + beta * gap.pow(power)
    return out


def rankmax_terms(
    scores: torch.Tensor,
    label: torch.Tensor,
    space: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rankmax (eq. 17) or, with ``margin``, AM-Rankmax (eq. 19) on the candidates of ``space``, per request.

    Anchors are the samples with ``y_j > 0``. Without ``margin``: ``sum_j log sum_i (z_i - z_j + 1)_+`` over
    every sample ``i`` of ``space`` (``i = j`` included, contributing 1). With ``margin`` ``[B, N, N]``
    (:func:`adaptive_margin`): ``sum_j log(1 + sum_{i: y_i < y_j} (z_i - z_j + m[j, i])_+)``.

    Args:
        scores: ``[B, N]`` float.
        label: ``[B, N]`` float hard labels.
        space: ``[B, N]`` bool.
        margin: optional ``[B, N, N]`` margins.

    Returns:
        ``(loss [B], has [B] bool)``; ``has`` = the request has an anchor with at least one compared sample.
    """
    s = zero_masked(scores, space)
    y = zero_masked(label, space)
    anchor = space & (y > 0)
    both = anchor.unsqueeze(-1) & space.unsqueeze(-2)  # [B, j, i]
    hinge_in = s.unsqueeze(-2) - s.unsqueeze(-1)  # z_i - z_j
    if margin is None:
        pair = both & ~torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
        hinge_in = hinge_in + 1.0
    else:
        pair = both & (y.unsqueeze(-2) < y.unsqueeze(-1))
        hinge_in = hinge_in + margin.to(s.dtype)
    hinge = torch.where(pair, torch.relu(hinge_in), torch.zeros_like(hinge_in)).sum(-1)  # [B, j]
    per_anchor = torch.log1p(hinge)
    used = anchor & pair.any(-1)
    per = torch.where(used, per_anchor, torch.zeros_like(per_anchor)).sum(-1)
    return per, used.any(-1)


def aggregate_hard_labels(
    feedback: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    impression_label: float,
    *,
    impression: torch.Tensor | None = None,
) -> torch.Tensor:
    """RankTower's hard labels (Sec. 4.2): ``impression_label + sum_f weights[f] * feedback[f]`` on impressions.

    Every exposed item earns ``impression_label`` and each kind of positive feedback (click, like, rating, ...)
    adds its weight; samples that were never exposed (candidate and random samples) get label 0.

    Args:
        feedback: feedback type -> ``[B, N]`` tensor (bool, int or float), all of the same shape.
        weights: feedback type -> weight; exactly the keys of ``feedback``.
        impression_label: the label every impression sample starts from.
        impression: optional ``[B, N]`` bool, the impression samples; ``None`` = every sample is one.

    Returns:
        ``[B, N]`` float labels (float32 unless a feedback tensor is float64), 0 off the impressions.

    Raises:
        ValueError: mismatched keys or shapes, no tensor to take the shape from, non-finite weights.
    """
    if set(feedback) != set(weights):
        raise ValueError(
            f"weights must name exactly the feedback types: feedback has {sorted(feedback)}, "
            f"weights has {sorted(weights)}"
        )
    if not math.isfinite(float(impression_label)) or any(not math.isfinite(float(w)) for w in weights.values()):
        raise ValueError(f"impression_label and weights must be finite, got {impression_label!r} and {dict(weights)}")
    tensors = list(feedback.values()) + ([impression] if impression is not None else [])
    if not tensors:
        raise ValueError("aggregate_hard_labels needs at least one feedback tensor or an impression mask")
    shape = tuple(tensors[0].shape)
    for name, t in [*feedback.items(), ("impression", impression)]:
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if impression is not None and impression.dtype != torch.bool:
        raise ValueError(f"impression must be a bool tensor, got {impression.dtype}")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in feedback.values()) else torch.float32
    out = torch.full(shape, float(impression_label), dtype=dtype, device=tensors[0].device)
    for name, t in feedback.items():
        out = out + float(weights[name]) * t.to(dtype)
    if impression is not None:
        out = torch.where(impression, out, torch.zeros_like(out))
    return out


# ------------------------------------------------------------------------------------------------------
# loss modules
# ------------------------------------------------------------------------------------------------------
def _check_positive(method: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{method}: {name} must be a positive finite number, got {v!r}")


def _check_non_negative(method: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{method}: {name} must be a finite number >= 0, got {v!r}")


class _RankTowerStageLoss(StageLoss):
    """Shared shell: validation, sample spaces, the optional ``soft_label`` and the sum over stages.

    Subclasses implement ``_terms(scores, label, teacher, spaces) -> dict[name, (per_request, has)]`` and
    ``_combine(batch_means) -> scalar``.
    """

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        top_position: int | None = None,
        random_position: int = 0,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        if top_position is not None and (isinstance(top_position, bool) or int(top_position) != top_position):
            raise ValueError(f"{self.method}: top_position must be an integer or None, got {top_position!r}")
        if isinstance(random_position, bool) or int(random_position) != random_position:
            raise ValueError(f"{self.method}: random_position must be an integer, got {random_position!r}")
        if top_position is not None and top_position <= random_position:
            raise ValueError(
                f"{self.method}: top_position={top_position} must be above random_position={random_position}"
            )
        self.top_position = None if top_position is None else int(top_position)
        self.random_position = int(random_position)

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        return self._compute_with_soft_label(logits, label, mask, stage, label)

    def _compute_with_soft_label(self, logits, label, mask, stage, soft_label) -> LossOutput:
        """Sum over stages of the terms of ``_terms``, with ``soft_label`` (or the label) as the teacher."""
        spaces = sample_spaces(stage, mask, top_position=self.top_position, random_position=self.random_position)
        label, teacher = zero_masked(label, mask), zero_masked(soft_label, mask)
        if self._uses_teacher() and bool((teacher < 0).logical_and(spaces.impression).any()):
            raise ValueError(
                f"{self.method}: soft_label (or the label, without soft_label) must be >= 0 at impression samples "
                "(eq. 14 weights)"
            )
        total = torch.zeros((), dtype=label.dtype, device=mask.device)
        parts: dict[str, torch.Tensor] = {}
        for i, x in enumerate(logits):
            means = {name: request_mean(*terms) for name, terms in self._terms(x, label, teacher, spaces)}
            parts.update({f"{name}/{i}": v for name, v in means.items()})
            total = total + self._combine(means)
        return LossOutput(loss=total, parts=detached_parts(**parts))

    def _uses_teacher(self) -> bool:
        """Whether a term reads the teacher (the soft labels), which must then be ``>= 0`` at impressions."""
        return False

    def _terms(self, scores, label, teacher, spaces: SampleSpaces):  # pragma: no cover - abstract
        raise NotImplementedError

    def _combine(self, means: dict[str, torch.Tensor]) -> torch.Tensor:
        (value,) = means.values()
        return value


def _check_distillation(method: str, distillation: str) -> str:
    if distillation not in _DISTILL_TERMS:
        raise ValueError(f"{method}: distillation must be one of {list(_DISTILL_TERMS)}, got {distillation!r}")
    return distillation


class RankTowerDistillLoss(_RankTowerStageLoss):
    """``"ranktower_distill"``: distillation on impression samples alone (eq. 14 by default).

    Args:
        keep: candidates each stage keeps, retrieval first (normally ``[k]``: one pre-ranking model).
        gt_num: unused (common interface).
        distillation: one of :data:`DISTILLATIONS` (default ``"softmax"``, eq. 14).
        top_position, random_position: sample spaces (see :func:`sample_spaces`).

    Called as ``loss_fn(logits, label=, mask=, stage=, soft_label=None)``: the teacher is ``soft_label`` (the
    ranking model's predictions), or the hard ``label`` when it is ``None``. Parts ``"distill/<i>"``.
    """

    method = "ranktower_distill"

    def __init__(self, *, keep: Sequence[int], gt_num: int = 10, distillation: str = "softmax", **spaces) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        self.distillation = _check_distillation(self.method, distillation)

    def _uses_teacher(self) -> bool:
        return True

    def _terms(self, scores, label, teacher, spaces):
        yield "distill", _DISTILL_TERMS[self.distillation](scores, teacher, spaces.impression)


class RankTowerSortLoss(_RankTowerStageLoss):
    """``"ranktower_sort"``: squared-distance SoftSort sorting loss on impression + candidate samples (eq. 15-16).

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        tau: SoftSort temperature (default :data:`DEFAULT_SORT_TAU`).
        target_tau: SoftSort temperature of the labels (default ``None`` = ``tau``, the paper's eq. 16).

    Parts ``"sort/<i>"``.
    """

    method = "ranktower_sort"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        tau: float = DEFAULT_SORT_TAU,
        target_tau: float | None = None,
        **spaces,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_positive(self.method, tau=tau)
        if target_tau is not None:
            _check_positive(self.method, target_tau=target_tau)
        self.tau = float(tau)
        self.target_tau = None if target_tau is None else float(target_tau)

    def _terms(self, scores, label, teacher, spaces):
        space = spaces.impression | spaces.candidate
        yield "sort", sorting_terms(scores, label, space, tau=self.tau, target_tau=self.target_tau)


class RankmaxLoss(_RankTowerStageLoss):
    """``"rankmax"``: Rankmax (eq. 17, Kong et al., NeurIPS 2020) on all valid samples. Parts ``"rankmax/<i>"``.

    Args: ``keep``, ``gt_num``, ``top_position``, ``random_position`` as :class:`RankTowerDistillLoss`.
    """

    method = "rankmax"

    def _terms(self, scores, label, teacher, spaces):
        valid = spaces.impression | spaces.candidate | spaces.random
        yield "rankmax", rankmax_terms(scores, label, valid)


def _check_margin(method: str, alpha: float, delta: float, beta: float, power: float) -> None:
    _check_non_negative(method, alpha=alpha, delta=delta, beta=beta)
    _check_positive(method, power=power)


class AMRankmaxLoss(_RankTowerStageLoss):
    """``"am_rankmax"``: Rankmax with the adaptive margin (eq. 18-19) on all valid samples.

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        alpha: extra margin over a ``y = 0`` (non-impression) sample (default :data:`DEFAULT_ALPHA` = 2).
        delta: constant margin (default :data:`DEFAULT_DELTA` = 1, the paper's).
        beta, power: optional label-gap margin ``beta |y_j - y_i|^power`` (eq. 18's alternative; default off).

    Parts ``"am_rankmax/<i>"``.
    """

    method = "am_rankmax"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        alpha: float = DEFAULT_ALPHA,
        delta: float = DEFAULT_DELTA,
        beta: float = 0.0,
        power: float = 1.0,
        **spaces,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_margin(self.method, alpha, delta, beta, power)
        self.alpha, self.delta, self.beta, self.power = float(alpha), float(delta), float(beta), float(power)

    def margin(self, label: torch.Tensor, impression: torch.Tensor) -> torch.Tensor:
        """The ``[B, N, N]`` margins of eq. 18 for these labels."""
        return adaptive_margin(label, impression, alpha=self.alpha, delta=self.delta, beta=self.beta, power=self.power)

    def _terms(self, scores, label, teacher, spaces):
        valid = spaces.impression | spaces.candidate | spaces.random
        yield "am_rankmax", rankmax_terms(scores, label, valid, margin=self.margin(label, spaces.impression))


class RankTowerLoss(_RankTowerStageLoss):
    """``"ranktower"``: the hybrid ``lambda_1 distill + lambda_2 sort + lambda_3 am_rankmax`` (eq. 20).

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        lambdas: ``(lambda_1, lambda_2, lambda_3)``, each ``>= 0``, not all 0 (default ``(0.1, 0.1, 1)``, ours);
            a term with weight 0 is not computed.
        distillation: the distillation term, one of :data:`DISTILLATIONS` (default ``"softmax"``, eq. 14).
        tau, target_tau: SoftSort temperatures (as :class:`RankTowerSortLoss`).
        alpha, delta, beta, power: AM-Rankmax margin (as :class:`AMRankmaxLoss`).

    Called as ``loss_fn(logits, label=, mask=, stage=, soft_label=None)``. Parts ``"distill/<i>"``,
    ``"sort/<i>"``, ``"am_rankmax/<i>"`` (unweighted batch means of the computed terms).
    """

    method = "ranktower"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        distillation: str = "softmax",
        tau: float = DEFAULT_SORT_TAU,
        target_tau: float | None = None,
        alpha: float = DEFAULT_ALPHA,
        delta: float = DEFAULT_DELTA,
        beta: float = 0.0,
        power: float = 1.0,
        **spaces,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        lambdas = tuple(lambdas)
        if len(lambdas) != 3:
            raise ValueError(f"{self.method}: lambdas must hold 3 weights (distill, sort, am_rankmax), got {lambdas}")
        _check_non_negative(self.method, **{f"lambdas[{i}]": v for i, v in enumerate(lambdas)})
        if not any(lambdas):
            raise ValueError(f"{self.method}: at least one of lambdas must be positive, got {lambdas}")
        _check_positive(self.method, tau=tau)
        if target_tau is not None:
            _check_positive(self.method, target_tau=target_tau)
        _check_margin(self.method, alpha, delta, beta, power)
        self.lambdas = tuple(float(v) for v in lambdas)
        self.distillation = _check_distillation(self.method, distillation)
        self.tau = float(tau)
        self.target_tau = None if target_tau is None else float(target_tau)
        self.alpha, self.delta, self.beta, self.power = float(alpha), float(delta), float(beta), float(power)

    def _uses_teacher(self) -> bool:
        return self.lambdas[0] > 0

    def extra_repr(self) -> str:
        return (
            f"keep={list(self.keep)}, lambdas={self.lambdas}, distillation={self.distillation!r}, tau={self.tau}, "
            f"target_tau={self.target_tau}, alpha={self.alpha}, delta={self.delta}, beta={self.beta}, "
            f"power={self.power}, top_position={self.top_position}"
        )

    def _terms(self, scores, label, teacher, spaces):
        l_distill, l_sort, l_am = self.lambdas
        if l_distill:
            yield "distill", _DISTILL_TERMS[self.distillation](scores, teacher, spaces.impression)
        if l_sort:
            space = spaces.impression | spaces.candidate
            yield "sort", sorting_terms(scores, label, space, tau=self.tau, target_tau=self.target_tau)
        if l_am:
            valid = spaces.impression | spaces.candidate | spaces.random
            margin = adaptive_margin(
                label, spaces.impression, alpha=self.alpha, delta=self.delta, beta=self.beta, power=self.power
            )
            yield "am_rankmax", rankmax_terms(scores, label, valid, margin=margin)

    def _combine(self, means):
        weights = dict(zip(("distill", "sort", "am_rankmax"), self.lambdas))
        return sum(weights[name] * value for name, value in means.items())

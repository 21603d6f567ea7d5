r"""RankTower's hybrid loss: distillation, SoftSort sorting and (AM-)Rankmax, over full-stage samples.

Source: Yan & Li, "RankTower: A Synergistic Framework for Enhancing Two-Tower Pre-Ranking Model", arXiv
2407.12385, Sec. 4 (hard labels Sec. 4.2, eq. 14-20 of Sec. 4.3). The pre-ranking model learns from samples
of the *whole* cascade, with a different objective per sample space.

**Sample spaces** (per request, from the funnel position ``stage``; ``T`` = the top position):

* *impression samples* ``I``: valid candidates with ``stage >= T`` (what the logged system exposed: RecFlow
  ``rank_pos``/``rerank_pos``, the rated items of the full-stage MovieLens data). By default ``T`` is, per
  request, the highest funnel position among its valid candidates, so the same loss works whatever the number
  of stages it is built for (``keep=[k]`` on a two-stage dataset included) as long as every request holds
  impressions, as in RecFlow and :mod:`cascade_ranking.datasets.full_stage`; pass ``top_position`` to fix ``T``;
* *random samples* ``R``: valid candidates at position ``<= random_position`` (default 0: RecFlow's
  ``prerank_neg``, the uniform negatives of the full-stage data) that are not impressions;
* *candidate samples* ``C``: every other valid candidate (the positions in between: what the funnel retrieved
  or ranked but did not expose).

**Terms**, per stage with scores ``s`` and graded labels ``y`` (higher is better):

.. math::

    L_{distill} &= -\sum_{j \in I} \mathrm{softmax}_I(r / T_d)_j \, \log \mathrm{softmax}_I(s)_j
        && \text{(eq. 14; } r = \text{the ranking model's soft labels)} \\
    \hat P[p, j] &= \mathrm{softmax}_{j \in S}\big(-(\mathrm{sort}(s)_p - s_j)^2 / \tau\big),\quad S = I \cup C
        && \text{(eq. 15, SoftSort with squared distance)} \\
    L_{sort} &= -\frac1{|S|} \sum_{p, j} Y[p, j] \log \hat P[p, j]
        && \text{(eq. 16; } Y = \text{the label permutation matrix over } S) \\
    L_{rankmax} &= \frac1{|A|} \sum_{i \in A} -\log
        \frac{e^{s_i}}{e^{s_i} + \sum_{j: y_j < y_i} e^{s_j + m(i, j)}}
        && \text{(eq. 17 with } m = 0 \text{; eq. 18-19 with the adaptive margin)} \\
    m(i, j) &= \alpha \, \mathbb 1[i \in I,\ j \notin I] + \delta \, (y_i - y_j) \\
    L &= \lambda_1 L_{distill} + \lambda_2 L_{sort} + \lambda_3 L_{AM\text{-}rankmax}
        && \text{(eq. 20)}

over all valid candidates for (AM-)Rankmax, where ``A`` = the candidates with at least one lower-labelled
valid candidate. ``Y = NeuralSort(y, 1e-4)`` restricted to ``S`` (:func:`~.base.label_permutation`), so
tied labels (e.g. the paper's hard labels, 0 on every candidate sample) share their places. ``log P̂`` is
computed as a log-softmax (no ``eps``), so the sorting loss keeps its gradient for badly wrong scores.

**The adaptive margin**: the paper writes ``m(i, j) = alpha 1[y = 0] + delta(y_i, y_j)`` with the indicator
on the lower-labelled item of the pair. Under the paper's hard labels (Sec. 4.2, :func:`aggregate_hard_labels`)
``y = 0`` exactly on non-impression samples, so the indicator reads "an impression above a non-impression";
we write it through the funnel positions so that it keeps that meaning with graded labels where negatives
are not 0 (RecFlow, the full-stage data: a negative at position ``p`` has label ``p + 1``). The label term
``delta(y_i, y_j)`` is the label gap scaled by ``delta``.

**Reduction** (every term, as the other losses of this package): a per-request value is averaged over the
requests where the term has at least one sample (distillation: one impression; sorting: one sample of ``S``;
Rankmax: one labelled pair); a batch with none gives exactly 0 with zero gradients. Padded candidates
contribute nothing and get exactly zero gradient; nothing depends on slot order. With several stages (the
losses are normally built with ``keep=[k]``, one pre-ranking model), every stage's terms are computed on its
own logits and summed.

**Hyper-parameters and their sources.** The paper's text beyond its abstract (its implementation details,
the values of ``lambda``, ``T_d``, ``tau``, ``alpha``, ``delta``) could not be reached when these defaults were
set, and no public implementation exists, so none of them is the paper's. The squared distance of the SoftSort
(eq. 15) and the sample space of each term are the paper's. The defaults (:data:`DEFAULT_LAMBDAS`,
:data:`DEFAULT_DISTILL_TEMPERATURE`, :data:`DEFAULT_SORT_TAU`, :data:`DEFAULT_ALPHA`, :data:`DEFAULT_DELTA`)
were **chosen on validation** (see the README's RankTower section): a sweep of the RankTower model on the
*validation* weeks of the MovieLens-100K pre-ranking dataset (never the test weeks), one seed per setting,
then the winner and AM-Rankmax alone on two more seeds (mean validation Recall@20: 0.788 with these defaults,
0.785 for AM-Rankmax alone, 0.732 for the former ``lambdas = (1, 1, 1)``, ``tau = 1``; table in
``docs/results/movielens-prerank/validation_sweep.md``). No implementation error was behind the former
defaults' deficit: the terms had values and logit gradients of the same order; the weighting was wrong:

* ``lambdas = (0.1, 0.1, 1)``: distillation and sorting as light regularisers of AM-Rankmax. At weight 1
  each of them cost recall (Recall@20 0.765 with distillation at 1 vs 0.803 at 0.1; 0.733 with sorting at 1
  and ``tau = 1``): both read only part of the sample space (distillation orders impressions among
  themselves, sorting ignores the random samples), so at full weight they take capacity from the
  impression-vs-negative separation that Recall@K measures;
* SoftSort ``tau = 10``: with squared distances, rows of ``P̂`` are sharp once score gaps exceed ``sqrt(tau)``,
  and then a mis-ordered pair costs about ``(s_a - s_j)^2 / tau``: a pull of strength ``1 / tau`` that drives
  the two scores together (it vanishes at the tie rather than pushing them past each other), and that pulls the
  tied candidate samples (all label 0) onto one score; the smaller ``tau``, the harder (validation Recall@20
  with ``lambdas = (0.1, 0.1, 1)``: 0.722 at ``tau = 0.1``, 0.793 at 1, 0.802 at 10, 0.800 at 100; with
  ``lambdas = (1, 1, 1)``: 0.729 at ``tau = 1``, 0.785 at 10);
* ``T_d = 1``, ``alpha = 1``, ``delta = 0.1``: our initial choices, kept: ``T_d = 2``, ``alpha`` 0.5 or 2,
  ``delta = 0.3`` moved validation recall by less than its noise (seed-to-seed spread about 0.015 on the 410
  validation requests).

When ``soft_label`` is not given (a dataset without a ranking model's predictions) the distillation target is
the graded label itself, ``softmax_I(y / T_d)``: the impressions' graded feedback plays the ranking model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from ..types import LossOutput
from ._common import StageLoss, zero_masked
from .base import detached_parts, label_permutation, request_mean

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DELTA",
    "DEFAULT_DISTILL_TEMPERATURE",
    "DEFAULT_LAMBDAS",
    "DEFAULT_SORT_TAU",
    "AMRankmaxLoss",
    "RankTowerDistillLoss",
    "RankTowerLoss",
    "RankTowerSortLoss",
    "RankmaxLoss",
    "SampleSpaces",
    "adaptive_margin",
    "aggregate_hard_labels",
    "distillation_terms",
    "rankmax_terms",
    "sample_spaces",
    "soft_sort_log_probs",
    "sorting_terms",
]


#: ``(lambda_1, lambda_2, lambda_3)`` of the hybrid loss (distillation, sorting, AM-Rankmax), chosen on validation.
DEFAULT_LAMBDAS: tuple[float, float, float] = (0.1, 0.1, 1.0)
#: Distillation teacher temperature ``T_d`` (eq. 14), our choice (validation: no better value).
DEFAULT_DISTILL_TEMPERATURE: float = 1.0
#: SoftSort temperature ``tau`` of the sorting loss (eq. 15), chosen on validation.
DEFAULT_SORT_TAU: float = 10.0
#: AM-Rankmax margin of an impression over a non-impression (eq. 19), our choice (validation: no better value).
DEFAULT_ALPHA: float = 1.0
#: AM-Rankmax margin per unit of label gap (eq. 19), our choice (validation: no better value).
DEFAULT_DELTA: float = 0.1


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
    scores: torch.Tensor,
    teacher: torch.Tensor,
    impression: torch.Tensor,
    *,
    temperature: float = DEFAULT_DISTILL_TEMPERATURE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax distillation on impression samples (eq. 14), per request.

    Args:
        scores: ``[B, N]`` float student logits.
        teacher: ``[B, N]`` float teacher values (soft labels, or graded labels); only impressions are read.
        impression: ``[B, N]`` bool, the sample space.
        temperature: ``T_d``, the teacher's softmax temperature.

    Returns:
        ``(loss [B], has [B] bool)``: cross-entropy ``-sum_j t_j log p_j`` with ``t = softmax_I(teacher / T_d)``
        and ``p = softmax_I(scores)``; 0 and ``False`` for a request without impressions.
    """
    s = zero_masked(scores, impression)
    with torch.no_grad():
        t = _masked_log_softmax(zero_masked(teacher, impression) / temperature, impression).exp() * impression
    per = -(t * _masked_log_softmax(s, impression)).sum(-1)
    return per, impression.any(-1)


def soft_sort_log_probs(scores: torch.Tensor, mask: torch.Tensor, *, tau: float) -> torch.Tensor:
    """``log P̂`` of the squared-distance SoftSort (eq. 15), ``[B, N, N]``, descending, masked.

    Row ``p < n`` (``n`` = valid count) over valid columns ``j`` is ``log_softmax_j(-(sort(s)_p - s_j)^2 / tau)``;
    entries of rows ``p >= n`` and of padded columns are 0. ``exp`` of it equals
    :func:`cascade_ranking.sorting.soft_sort` with ``power=2`` on valid entries.
    """
    s = zero_masked(scores, mask)
    low = torch.finfo(s.dtype).min
    sorted_s = torch.sort(torch.where(mask, s, torch.full_like(s, low)), dim=-1, descending=True)[0]
    row_valid = torch.arange(s.shape[-1], device=s.device) < mask.sum(-1, keepdim=True)  # [B, N]
    sorted_s = torch.where(row_valid, sorted_s, torch.zeros_like(sorted_s))
    logits = -(sorted_s.unsqueeze(-1) - s.unsqueeze(-2)).square() / tau  # [B, p, j]
    keep = row_valid.unsqueeze(-1) & mask.unsqueeze(-2)
    return _masked_log_softmax(logits, keep)


def sorting_terms(
    scores: torch.Tensor, label: torch.Tensor, space: torch.Tensor, *, tau: float = DEFAULT_SORT_TAU
) -> tuple[torch.Tensor, torch.Tensor]:
    """SoftSort sorting loss (eq. 15-16) on the candidates of ``space``, per request.

    Returns:
        ``(loss [B], has [B] bool)``: ``-(1/n) sum_{p, j} Y[p, j] log P̂[p, j]`` over the ``n`` samples of
        ``space`` (``Y`` = label permutation matrix, ties shared); 0 and ``False`` for an empty space.
    """
    y = label_permutation(zero_masked(label, space), space, scores.dtype)
    log_p = soft_sort_log_probs(scores, space, tau=tau)
    n = space.sum(-1)
    per = -(y * log_p).sum((-2, -1)) / n.clamp_min(1).to(scores.dtype)
    return per, n > 0


def adaptive_margin(label: torch.Tensor, impression: torch.Tensor, *, alpha: float, delta: float) -> torch.Tensor:
    """AM-Rankmax margins ``m[b, i, j] = alpha 1[i impression, j not] + delta (y_i - y_j)`` (eq. 19), ``[B, N, N]``.

    Only entries with ``y_j < y_i`` between valid candidates are used by :func:`rankmax_terms`.
    """
    imp = impression.to(label.dtype)
    above_unseen = imp.unsqueeze(-1) * (1.0 - imp.unsqueeze(-2))
    return alpha * above_unseen + delta * (label.unsqueeze(-1) - label.unsqueeze(-2))


def rankmax_terms(
    scores: torch.Tensor, label: torch.Tensor, space: torch.Tensor, *, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(AM-)Rankmax (eq. 17-18) on the candidates of ``space``, per request.

    For every anchor ``i`` with lower-labelled candidates ``j`` in ``space``:
    ``log(1 + sum_{j: y_j < y_i} exp(s_j - s_i + m[i, j]))``, averaged over the anchors.

    Args:
        scores: ``[B, N]`` float.
        label: ``[B, N]`` float graded labels (ties form no pair).
        space: ``[B, N]`` bool.
        margin: optional ``[B, N, N]`` margins ``m[b, i, j]`` (:func:`adaptive_margin`); ``None`` = Rankmax.

    Returns:
        ``(loss [B], has [B] bool)``; 0 and ``False`` for a request without a labelled pair.
    """
    s = zero_masked(scores, space)
    y = zero_masked(label, space)
    pair = space.unsqueeze(-1) & space.unsqueeze(-2) & (y.unsqueeze(-2) < y.unsqueeze(-1))  # [B, i, j]
    z = s.unsqueeze(-2) - s.unsqueeze(-1)  # s_j - s_i
    if margin is not None:
        z = z + margin.to(z.dtype)
    z = torch.where(pair, z, torch.full_like(z, torch.finfo(z.dtype).min))
    per_anchor = torch.logsumexp(torch.cat([torch.zeros_like(z[..., :1]), z], dim=-1), dim=-1)  # [B, N]
    anchor = pair.any(-1)
    count = anchor.sum(-1)
    per = torch.where(anchor, per_anchor, torch.zeros_like(per_anchor)).sum(-1) / count.clamp_min(1).to(s.dtype)
    return per, count > 0


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
        total = torch.zeros((), dtype=label.dtype, device=mask.device)
        parts: dict[str, torch.Tensor] = {}
        for i, x in enumerate(logits):
            means = {name: request_mean(*terms) for name, terms in self._terms(x, label, teacher, spaces)}
            parts.update({f"{name}/{i}": v for name, v in means.items()})
            total = total + self._combine(means)
        return LossOutput(loss=total, parts=detached_parts(**parts))

    def _terms(self, scores, label, teacher, spaces: SampleSpaces):  # pragma: no cover - abstract
        raise NotImplementedError

    def _combine(self, means: dict[str, torch.Tensor]) -> torch.Tensor:
        (value,) = means.values()
        return value


class RankTowerDistillLoss(_RankTowerStageLoss):
    """``"ranktower_distill"``: softmax distillation on impression samples (eq. 14).

    Args:
        keep: candidates each stage keeps, retrieval first (normally ``[k]``: one pre-ranking model).
        gt_num: unused (common interface).
        temperature: teacher softmax temperature ``T_d`` (default :data:`DEFAULT_DISTILL_TEMPERATURE` = 1).
        top_position, random_position: sample spaces (see :func:`sample_spaces`).

    Called as ``loss_fn(logits, label=, mask=, stage=, soft_label=None)``: the teacher is ``soft_label`` (the
    ranking model's predictions), or the graded ``label`` when it is ``None``. Parts ``"distill/<i>"``.
    """

    method = "ranktower_distill"

    def __init__(
        self, *, keep: Sequence[int], gt_num: int = 10, temperature: float = DEFAULT_DISTILL_TEMPERATURE, **spaces
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_positive(self.method, temperature=temperature)
        self.temperature = float(temperature)

    def _terms(self, scores, label, teacher, spaces):
        yield "distill", distillation_terms(scores, teacher, spaces.impression, temperature=self.temperature)


class RankTowerSortLoss(_RankTowerStageLoss):
    """``"ranktower_sort"``: squared-distance SoftSort sorting loss on impression + candidate samples (eq. 15-16).

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        tau: SoftSort temperature (default :data:`DEFAULT_SORT_TAU` = 10, chosen on validation).

    Parts ``"sort/<i>"``.
    """

    method = "ranktower_sort"

    def __init__(self, *, keep: Sequence[int], gt_num: int = 10, tau: float = DEFAULT_SORT_TAU, **spaces) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_positive(self.method, tau=tau)
        self.tau = float(tau)

    def _terms(self, scores, label, teacher, spaces):
        yield "sort", sorting_terms(scores, label, spaces.impression | spaces.candidate, tau=self.tau)


class RankmaxLoss(_RankTowerStageLoss):
    """``"rankmax"``: Rankmax (eq. 17) on all valid samples, no margin. Parts ``"rankmax/<i>"``.

    Args: ``keep``, ``gt_num``, ``top_position``, ``random_position`` as :class:`RankTowerDistillLoss`.
    """

    method = "rankmax"

    def _terms(self, scores, label, teacher, spaces):
        valid = spaces.impression | spaces.candidate | spaces.random
        yield "rankmax", rankmax_terms(scores, label, valid)


class AMRankmaxLoss(_RankTowerStageLoss):
    """``"am_rankmax"``: Rankmax with the adaptive margin (eq. 18-19) on all valid samples.

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        alpha: extra margin of an impression over a non-impression (default :data:`DEFAULT_ALPHA` = 1).
        delta: margin per unit of label gap (default :data:`DEFAULT_DELTA` = 0.1).

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
        **spaces,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_non_negative(self.method, alpha=alpha, delta=delta)
        self.alpha, self.delta = float(alpha), float(delta)

    def _terms(self, scores, label, teacher, spaces):
        valid = spaces.impression | spaces.candidate | spaces.random
        margin = adaptive_margin(label, spaces.impression, alpha=self.alpha, delta=self.delta)
        yield "am_rankmax", rankmax_terms(scores, label, valid, margin=margin)


class RankTowerLoss(_RankTowerStageLoss):
    """``"ranktower"``: the hybrid ``lambda_1 distill + lambda_2 sort + lambda_3 am_rankmax`` (eq. 20).

    Args:
        keep, gt_num, top_position, random_position: as :class:`RankTowerDistillLoss`.
        lambdas: ``(lambda_1, lambda_2, lambda_3)``, each ``>= 0``, not all 0 (default ``(0.1, 0.1, 1)``,
            chosen on validation, see the module docstring); a term with weight 0 is not computed.
        temperature: distillation teacher temperature (default 1).
        tau: SoftSort temperature (default 10, chosen on validation).
        alpha, delta: AM-Rankmax margin (defaults 1 and 0.1).

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
        temperature: float = DEFAULT_DISTILL_TEMPERATURE,
        tau: float = DEFAULT_SORT_TAU,
        alpha: float = DEFAULT_ALPHA,
        delta: float = DEFAULT_DELTA,
        **spaces,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        lambdas = tuple(lambdas)
        if len(lambdas) != 3:
            raise ValueError(f"{self.method}: lambdas must hold 3 weights (distill, sort, am_rankmax), got {lambdas}")
        _check_non_negative(self.method, **{f"lambdas[{i}]": v for i, v in enumerate(lambdas)})
        if not any(lambdas):
            raise ValueError(f"{self.method}: at least one of lambdas must be positive, got {lambdas}")
        _check_positive(self.method, temperature=temperature, tau=tau)
        _check_non_negative(self.method, alpha=alpha, delta=delta)
        self.lambdas = tuple(float(v) for v in lambdas)
        self.temperature, self.tau = float(temperature), float(tau)
        self.alpha, self.delta = float(alpha), float(delta)

    def extra_repr(self) -> str:
        return (
            f"keep={list(self.keep)}, lambdas={self.lambdas}, temperature={self.temperature}, tau={self.tau}, "
            f"alpha={self.alpha}, delta={self.delta}, top_position={self.top_position}"
        )

    def _terms(self, scores, label, teacher, spaces):
        l_distill, l_sort, l_am = self.lambdas
        if l_distill:
            yield "distill", distillation_terms(scores, teacher, spaces.impression, temperature=self.temperature)
        if l_sort:
            yield "sort", sorting_terms(scores, label, spaces.impression | spaces.candidate, tau=self.tau)
        if l_am:
            valid = spaces.impression | spaces.candidate | spaces.random
            margin = adaptive_margin(label, spaces.impression, alpha=self.alpha, delta=self.delta)
            yield "am_rankmax", rankmax_terms(scores, label, valid, margin=margin)

    def _combine(self, means):
        weights = dict(zip(("distill", "sort", "am_rankmax"), self.lambdas))
        return sum(weights[name] * value for name, value in means.items())

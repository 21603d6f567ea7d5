"""Cascade metrics, batched and masked: joint recall, stage recall, NDCG@k, Kendall's tau; streaming.

Conventions (every function):

* ``logits`` ``[B, N]`` float (one tensor per stage for the joint recall, retrieval first), ``label``
  ``[B, N]`` float graded relevance (higher is better), ``mask`` ``[B, N]`` bool (valid candidates).
  Padded candidates take no part in any metric.
* Per-request functions return ``[B]`` float64 tensors on the inputs' device; no per-request Python.
* **Ground truth** (Wang et al., LCRON, ICML 2025, Sec. 4.1; RecFlow, Liu et al., ICLR 2025): the top
  ``gt_num`` valid candidates by label. Ties at the boundary share the remaining places: if ``a``
  candidates have a label above the ``g``-th largest label ``v`` (``g = min(gt_num, n_valid)``) and ``m``
  have label exactly ``v``, each of those ``m`` counts ``(g - a) / m`` (:func:`ground_truth_weights`).
  That is the expected recall under a uniformly random choice among the tied candidates, independent of
  slot order; without ties it is the plain set recall. The release picks one tied candidate arbitrarily
  (``np.argpartition``); on RecFlow, whose ground truth is the top group with distinct labels, the two
  agree.
* **Recall denominators**: ``min(gt_num, n_valid)`` (the release divides by ``gt_num``; identical when a
  request has at least ``gt_num`` valid candidates, as in RecFlow). A request with no valid candidate
  scores 0 and is left out of :class:`CascadeMetrics`' averages (it is still counted in ``requests``).
* **Ties in scores** are broken as in :func:`cascade_ranking.cascade.topk_mask` (lower slot first; slots
  are shuffled by the loader, so this cannot leak labels; or uniformly at random with a ``generator``).
  NDCG averages over tied scores exactly as scikit-learn's ``ndcg_score``; Kendall's tau-b accounts for
  ties as ``scipy.stats.kendalltau``. NaN scores or labels raise ``ValueError``.

Which numbers the LCRON paper reports (as released, ``deep_components/metrics.py``): the end-to-end joint
recall of the cascade (Recall@10 of the final set), and per stage Recall@10@k with ``k`` the stage's own
keep size (two stages: retrieval @30, pre-ranking @20; three stages: @40, @30, @20), NDCG@10 and Kendall's
tau over all valid candidates. :class:`CascadeMetrics` reports exactly these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .cascade import select_chain, topk_mask
from .types import check_keep, positive_int

__all__ = [
    "CascadeMetrics",
    "ground_truth_weights",
    "joint_recall",
    "kendall_tau",
    "ndcg_at_k",
    "stage_recall",
]


# -- checks -----------------------------------------------------------------------------------------
def _check(name: str, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> None:
    if tuple(logits.shape) != tuple(label.shape):
        raise ValueError(f"{name}: logits shape {tuple(logits.shape)} does not match label {tuple(label.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: logits must be floating point, got {logits.dtype}")
    if bool(torch.isnan(logits[mask]).any()):
        raise ValueError(f"{name}: logits contain NaN at valid candidates")


def _check_label(name: str, label: torch.Tensor, mask: torch.Tensor) -> None:
    if label.dim() != 2:
        raise ValueError(f"{name}: label must be [B, N], got shape {tuple(label.shape)}")
    if tuple(mask.shape) != tuple(label.shape):
        raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match label {tuple(label.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: mask must be bool, got {mask.dtype}")
    if not label.is_floating_point() and label.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: label must be float (or integer), got {label.dtype}")
    if label.is_floating_point() and bool(torch.isnan(label[mask]).any()):
        raise ValueError(f"{name}: label contains NaN at valid candidates")


# -- ground truth -----------------------------------------------------------------------------------
def ground_truth_weights(label: torch.Tensor, mask: torch.Tensor, gt_num: int) -> torch.Tensor:
    """Ground-truth membership of each candidate, ``[B, N]`` float64 in ``[0, 1]``, ties sharing places.

    Weight 1 for valid candidates whose label is above the ``g``-th largest valid label ``v``
    (``g = min(gt_num, n_valid)``), ``(g - a) / m`` for the ``m`` valid candidates with label exactly
    ``v`` (``a`` = number above), 0 otherwise. Each request's weights sum to ``g``.

    Raises:
        ValueError / TypeError: shapes, dtypes, NaN labels, ``gt_num`` not a positive integer.
    """
    name = "ground_truth_weights"
    gt_num = positive_int(gt_num, f"{name}: gt_num")
    _check_label(name, label, mask)
    return _gt_weights(label, mask, gt_num)


def _gt_weights(label: torch.Tensor, mask: torch.Tensor, gt_num: int) -> torch.Tensor:
    y = label.double()
    n_valid = mask.sum(-1)  # [B]
    g = n_valid.clamp(max=gt_num)  # [B]
    y_sorted = torch.sort(y.masked_fill(~mask, -math.inf), dim=-1, descending=True).values
    v = y_sorted.gather(1, (g - 1).clamp(min=0).unsqueeze(1))  # [B, 1]: g-th largest valid label
    above = mask & (y > v)
    at = mask & (y == v)
    share = (g - above.sum(-1)).double() / at.sum(-1).clamp(min=1).double()  # [B]
    w = above.double() + at.double() * share.unsqueeze(1)
    return torch.where((g > 0).unsqueeze(1), w, torch.zeros_like(w))


def _recall(selected: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, gt_num: int) -> torch.Tensor:
    denom = mask.sum(-1).clamp(max=gt_num).double()
    hit = (weights * selected.double()).sum(-1)
    return torch.where(denom > 0, hit / denom.clamp(min=1.0), torch.zeros_like(hit))


# -- recalls ----------------------------------------------------------------------------------------
def joint_recall(
    logits: Sequence[torch.Tensor],
    label: torch.Tensor,
    mask: torch.Tensor,
    keep: Sequence[int],
    gt_num: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """End-to-end recall of the cascade per request: ``|final set ∩ ground truth| / min(gt_num, n_valid)``.

    The final set is the output of the top-k chain (:func:`cascade_ranking.cascade.select_chain`): stage 1
    keeps its top ``keep[0]`` valid candidates, stage 2 its top ``keep[1]`` of those, and so on (LCRON,
    Wang et al. 2025, Sec. 4.1, "joint recall"). Ground truth and ties: see the module docstring.

    Args:
        logits: one ``[B, N]`` float tensor per stage, retrieval first.
        label, mask: ``[B, N]`` float labels and bool valid mask.
        keep: keep sizes (positive, strictly decreasing), one per stage.
        gt_num: ground-truth size (10 in the LCRON experiments).
        generator: optional, random tie-breaking of scores.

    Returns:
        ``[B]`` float64 in ``[0, 1]`` (0 for a request with no valid candidate).
    """
    name = "joint_recall"
    gt_num = positive_int(gt_num, f"{name}: gt_num")
    keep = check_keep(keep, what=f"{name}: keep")
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence) or not logits:
        raise TypeError(f"{name}: logits must be a non-empty list of [B, N] tensors, one per stage")
    _check_label(name, label, mask)
    for s in logits:
        _check(name, s, label, mask)
    final = select_chain(list(logits), mask, keep, generator=generator)[-1]
    return _recall(final, _gt_weights(label, mask, gt_num), mask, gt_num)


def stage_recall(
    logits: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    gt_num: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Recall@gt@k of one stage alone: ``|top k by logits ∩ ground truth| / min(gt_num, n_valid)``.

    The stage keeps its top ``k`` of all valid candidates (LCRON's per-stage "Recall@10@k"; RecFlow, Liu
    et al. 2025). Ground truth and ties: see the module docstring.

    Returns:
        ``[B]`` float64 in ``[0, 1]`` (0 for a request with no valid candidate).
    """
    name = "stage_recall"
    gt_num = positive_int(gt_num, f"{name}: gt_num")
    k = positive_int(k, f"{name}: k")
    _check_label(name, label, mask)
    _check(name, logits, label, mask)
    top = topk_mask(logits.detach(), mask, k, generator=generator)
    return _recall(top, _gt_weights(label, mask, gt_num), mask, gt_num)


# -- NDCG -------------------------------------------------------------------------------------------
def ndcg_at_k(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, k: int = 10) -> torch.Tensor:
    """NDCG@k per request over the valid candidates, gain = label, as scikit-learn's ``ndcg_score``.

    ``DCG@k = sum_j label_j * d_j`` with discount ``1 / log2(rank + 1)`` for ranks ``<= k`` (0 beyond);
    candidates with tied scores share the discounts of the ranks they jointly occupy (averaged over all
    orders of the tie, McSherry & Najork, ECIR 2008, as scikit-learn's default ``ignore_ties=False``);
    ``NDCG = DCG / IDCG``, and 0 when ``IDCG = 0`` (no positive label). Järvelin & Kekäläinen, TOIS 2002.

    Returns:
        ``[B]`` float64 (0 for a request with no valid candidate).

    Raises:
        ValueError: negative labels at valid candidates (as scikit-learn), ``k`` not positive, bad inputs.
    """
    name = "ndcg_at_k"
    k = positive_int(k, f"{name}: k")
    _check_label(name, label, mask)
    _check(name, logits, label, mask)
    if bool((label[mask] < 0).any()):
        raise ValueError(f"{name}: labels must be non-negative (gains), got negative labels at valid candidates")
    return _ndcg(logits.detach(), label, mask, k)


def _counts_below(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate, the number of valid candidates with a smaller value and with a value at most its own.

    ``O(N log N)`` per request (a sort and two binary searches) instead of ``[B, N, N]`` comparisons; exact,
    infinities included (padded slots sort as ``+inf`` and the counts are clipped to the valid ones).
    """
    x = x.double() if not x.is_floating_point() else x
    srt = torch.where(mask, x, torch.full_like(x, math.inf)).sort(-1).values
    n = mask.sum(-1, keepdim=True)
    below = torch.minimum(torch.searchsorted(srt, x.contiguous(), right=False), n)
    upto = torch.minimum(torch.searchsorted(srt, x.contiguous(), right=True), n)
    return below, upto


def _ndcg(s: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    n = s.shape[-1]
    y = torch.where(mask, label.double(), torch.zeros((), dtype=torch.float64, device=label.device))
    ranks = torch.arange(n, device=s.device, dtype=torch.float64)
    disc = torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))  # [N]
    cum = torch.cat([disc.new_zeros(1), disc.cumsum(0)])  # cum[r] = sum of the first r discounts
    below, upto = _counts_below(s, mask)
    higher = mask.sum(-1, keepdim=True) - upto  # [B, j]: valid l scored above j
    tied = upto - below  # [B, j]: valid l tied with j (j included when valid)
    share = (cum[higher + tied] - cum[higher]) / tied.clamp(min=1).double()  # mean discount of the tie
    dcg = (y * share * mask.double()).sum(-1)
    ideal = torch.sort(y.masked_fill(~mask, 0.0), dim=-1, descending=True).values
    idcg = (ideal * disc).sum(-1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(dcg))


# -- Kendall's tau ----------------------------------------------------------------------------------
def kendall_tau(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b per request between scores and labels over the valid candidates (O(N^2) pairs).

    ``tau_b = (C - D) / sqrt((P - T_s) (P - T_y))`` over valid pairs, ``P`` pairs, ``T_s`` / ``T_y`` pairs
    tied in score / label (Kendall 1945), as ``scipy.stats.kendalltau`` (variant ``"b"``).

    Returns:
        ``[B]`` float64 in ``[-1, 1]``; NaN where tau is undefined (fewer than 2 valid candidates, or all
        scores or all labels equal), as scipy. :class:`CascadeMetrics` averages over defined values, as
        the LCRON release does.
    """
    name = "kendall_tau"
    _check_label(name, label, mask)
    _check(name, logits, label, mask)
    return _kendall(logits.detach(), label, mask)


def _pair_signs(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` sign of ``x_i - x_j`` over valid pairs (0 elsewhere), exact, also for infinities.

    The values are replaced by their dense ranks among the valid candidates (:func:`_counts_below`), which
    keep every comparison and are small integers, so the signs of their differences are exact in floating point.
    Float32 (every count below ``2^24`` is exact) unless ``N^2`` is larger, then float64.
    """
    n = x.shape[-1]
    dtype = torch.float32 if n * n < 2**24 else torch.float64
    rank = _counts_below(x, mask)[0].to(dtype)
    m = mask.to(dtype)
    d = (rank.unsqueeze(2) - rank.unsqueeze(1)).sign_()
    return d.mul_(m.unsqueeze(2)).mul_(m.unsqueeze(1))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per request ``sum_ij a_ij b_ij`` of two ``[B, N, N]`` tensors, as float64 (a batched matrix product)."""
    bsz = a.shape[0]
    return torch.bmm(a.reshape(bsz, 1, -1), b.reshape(bsz, -1, 1)).reshape(bsz).double()


def _kendall(s: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, dy: torch.Tensor | None = None) -> torch.Tensor:
    dy = _pair_signs(label, mask) if dy is None else dy
    ds = _pair_signs(s, mask)
    # each unordered pair appears twice (i, j) and (j, i) with the same product; diagonal is 0
    concordance = _dot(ds, dy) / 2  # C - D
    untied_s = _dot(ds, ds) / 2
    untied_y = _dot(dy, dy) / 2
    tau = concordance / untied_s.sqrt() / untied_y.sqrt()
    nan = torch.full_like(tau, math.nan)
    return torch.where((untied_s > 0) & (untied_y > 0), tau.clamp(-1.0, 1.0), nan)


# -- streaming --------------------------------------------------------------------------------------
class CascadeMetrics:
    """Streaming cascade metrics: sums of per-request values and counts, mergeable across processes.

    ``update`` adds a batch; ``compute`` returns means as Python floats:

    * ``"joint_recall"``: end-to-end recall of the top-k chain with ``keep``;
    * ``"stage_recall/<stage>"``: that stage's Recall@``gt_num``@``keep[i]`` (its own keep size);
    * ``"ndcg@<ndcg_k>/<stage>"``: NDCG@``ndcg_k`` of that stage's scores over all valid candidates;
    * ``"kendall_tau/<stage>"``: mean Kendall tau-b over requests where it is defined;
    * ``"requests"``: every request seen (none is ever dropped).

    Recall and NDCG are averaged over requests with at least one valid candidate; a mean over no request
    is NaN. The sufficient statistics are one float64 vector (:meth:`state`), so data-parallel
    evaluation sums them across ranks (:meth:`merge`, or :meth:`all_reduce` under ``torch.distributed``)
    before :meth:`compute`; the result equals evaluating all requests in one batch.

    Args:
        stage_names: stage names, retrieval first (``("retrieval", "prerank")``).
        keep: keep sizes, one per stage (positive, strictly decreasing).
        gt_num: ground-truth size (10).
        ndcg_k: NDCG cutoff (10).
        generator: optional ``torch.Generator`` for random tie-breaking of scores (default: slot order).

    Raises:
        ValueError: mismatched ``stage_names`` / ``keep``, duplicate names, non-positive sizes.
    """

    def __init__(
        self,
        stage_names: Sequence[str],
        keep: Sequence[int],
        gt_num: int,
        ndcg_k: int = 10,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        self.stage_names = tuple(stage_names)
        self.keep = check_keep(keep, what="CascadeMetrics: keep")
        if len(self.stage_names) != len(self.keep):
            raise ValueError(
                f"CascadeMetrics: {len(self.stage_names)} stage names {list(self.stage_names)} "
                f"but {len(self.keep)} keep sizes {list(self.keep)}"
            )
        if len(set(self.stage_names)) != len(self.stage_names):
            raise ValueError(f"CascadeMetrics: stage names must be unique, got {list(self.stage_names)}")
        self.gt_num = positive_int(gt_num, "CascadeMetrics: gt_num")
        self.ndcg_k = positive_int(ndcg_k, "CascadeMetrics: ndcg_k")
        self.generator = generator
        self._names = self._layout()
        self._state = torch.zeros(len(self._names), dtype=torch.float64)

    def _layout(self) -> list[str]:
        names = ["requests", "requests_nonempty", "joint_recall_sum"]
        for s in self.stage_names:
            names += [f"stage_recall_sum/{s}", f"ndcg_sum/{s}", f"kendall_tau_sum/{s}", f"kendall_tau_count/{s}"]
        return names

    @property
    def state_names(self) -> list[str]:
        """Names of the entries of :meth:`state`, in order."""
        return list(self._names)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._state.zero_()

    def state(self) -> torch.Tensor:
        """A copy of the sufficient statistics: a 1-D float64 CPU tensor laid out as :attr:`state_names`."""
        return self._state.clone()

    def merge(self, state: torch.Tensor) -> None:
        """Add another accumulator's :meth:`state` (same stages, keep, gt_num, ndcg_k) to this one."""
        if tuple(state.shape) != tuple(self._state.shape):
            raise ValueError(
                f"CascadeMetrics.merge: state has shape {tuple(state.shape)}, expected {tuple(self._state.shape)}"
            )
        self._state += state.detach().to(device="cpu", dtype=torch.float64)

    def all_reduce(self, device: torch.device | str | None = None, group=None) -> None:
        """Sum the statistics over all ranks of ``torch.distributed`` (no-op when it is not initialised).

        ``device``: where the collective runs (a CUDA device for NCCL; default CPU).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        t = self._state.to(device or "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self._state = t.to("cpu")

    @torch.no_grad()
    def update(self, logits: Sequence[torch.Tensor], label: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one batch: ``logits`` one ``[B, N]`` tensor per stage (retrieval first), ``label``, ``mask``.

        Raises:
            ValueError / TypeError: wrong number of stages, shapes, dtypes, NaN scores or labels,
                negative labels (NDCG).
        """
        name = "CascadeMetrics.update"
        if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence):
            raise TypeError(f"{name}: logits must be a list of [B, N] tensors, one per stage")
        if len(logits) != len(self.stage_names):
            raise ValueError(f"{name}: got {len(logits)} logits tensors for stages {list(self.stage_names)}")
        logits = [s.detach() for s in logits]
        _check_label(name, label, mask)
        for s in logits:
            _check(name, s, label, mask)
        if bool((label[mask] < 0).any()):
            raise ValueError(f"{name}: labels must be non-negative (NDCG gains)")
        weights = _gt_weights(label, mask, self.gt_num)
        final = select_chain(logits, mask, self.keep, generator=self.generator)[-1]
        parts = [
            torch.tensor(float(mask.shape[0]), dtype=torch.float64, device=mask.device),
            (mask.sum(-1) > 0).sum().double(),
            _recall(final, weights, mask, self.gt_num).sum(),
        ]
        dy = _pair_signs(label, mask)  # shared by every stage's Kendall tau
        for s, k in zip(logits, self.keep):
            top = topk_mask(s, mask, k, generator=self.generator)
            tau = _kendall(s, label, mask, dy)
            defined = ~torch.isnan(tau)
            parts += [
                _recall(top, weights, mask, self.gt_num).sum(),
                _ndcg(s, label, mask, self.ndcg_k).sum(),
                torch.where(defined, tau, torch.zeros_like(tau)).sum(),
                defined.sum().double(),
            ]
        self._state += torch.stack(parts).cpu()

    def compute(self) -> dict[str, float]:
        """Means over the requests seen so far, as Python floats (NaN for a mean over no request)."""
        st = dict(zip(self._names, self._state.tolist()))

        def mean(total: float, count: float) -> float:
            return total / count if count > 0 else math.nan

        n = st["requests_nonempty"]
        out = {"joint_recall": mean(st["joint_recall_sum"], n)}
        for s in self.stage_names:
            out[f"stage_recall/{s}"] = mean(st[f"stage_recall_sum/{s}"], n)
        for s in self.stage_names:
            out[f"ndcg@{self.ndcg_k}/{s}"] = mean(st[f"ndcg_sum/{s}"], n)
        for s in self.stage_names:
            out[f"kendall_tau/{s}"] = mean(st[f"kendall_tau_sum/{s}"], st[f"kendall_tau_count/{s}"])
        out["requests"] = st["requests"]
        return out

"""Relaxed sorting operators: NeuralSort and SoftSort permutation matrices, with a candidate mask.

Conventions (shared by every loss in this package):

* ``scores`` is ``[B, N]`` (floating); ``mask`` is ``[B, N]`` bool, ``True`` at valid candidates.
* The returned ``P`` is ``[B, N, N]``: row ``r`` (0-based; rank ``r + 1``) is a soft indicator of the
  candidate at the ``r``-th place of the **descending** order. Rows are stochastic over the valid
  candidates.
* Padded candidates are sorted last: for a request with ``n`` valid candidates, rows ``r < n`` put no mass
  on padded columns, rows ``r >= n`` are all zero, and padded scores receive exactly zero gradient. With
  every candidate valid the result is the operator of the paper, unchanged.

References:
    Grover, Wang, Zweig, Ermon. "Stochastic Optimization of Sorting Networks via Continuous Relaxations."
    ICLR 2019 (NeuralSort, eq. 5: ``P[r, :] = softmax(((n + 1 - 2r) s - A_s 1) / tau)``).
    Prillo, Eisenschlos. "SoftSort: A Continuous Relaxation for the argsort Operator." ICML 2020
    (eq. 2: ``P[r, :] = softmax(-d(sort(s)_r, s) / tau)``, ``d = |.|``; RankTower uses ``d = (.)^2``).
"""

from __future__ import annotations

import torch

__all__ = ["neural_sort", "soft_sort", "hard_sort", "soft_topk_membership", "pairwise_abs_sum", "split_column_sums"]


def _check(scores: torch.Tensor, mask: torch.Tensor | None, tau: float) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    return mask


def _finish(logits: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Softmax over valid columns of rows ``r < n``; zero rows ``r >= n``; finite for all-masked rows."""
    logits = (logits / tau).masked_fill(~mask.unsqueeze(-2), torch.finfo(logits.dtype).min)
    return _softmax_valid_rows(logits, mask)


def _softmax_valid_rows(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)`` with rows ``r >= n`` zeroed; ``logits`` hold ``finfo.min`` at padded columns.

    Padded columns need no second mask: in a row with a valid column, ``exp(finfo.min - max)`` is exactly 0.
    """
    p = torch.softmax(logits, dim=-1)
    row_valid = torch.arange(mask.shape[-1], device=mask.device) < mask.sum(-1, keepdim=True)  # [B, N]
    return p * row_valid.unsqueeze(-1).to(p.dtype)


class _PairwiseAbsSum(torch.autograd.Function):
    """``a[b, j] = sum_k m[b, k] |x[b, j] - x[b, k]|`` by sorting and prefix sums, ``O(N log N)`` per row.

    With the valid values sorted, ``p_j`` of them below ``x_j``, ``q_j`` at or below it and prefix sums
    ``S``: ``a_j = p_j x_j - S[p_j] + (S[n] - S[q_j]) - (n - q_j) x_j`` (ties contribute 0). Computed in
    float64 for float32 inputs, so the prefix sums lose nothing to cancellation. The gradient is that of
    the ``[B, N, N]`` formula under autograd (``abs'(0) = 0``), also at ties:
    ``dx_t = g_t (p_t - (n - q_t)) + m_t sum_j g_j sign(x_t - x_j)``, the last sum again by sorting.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        work = torch.float64 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype
        xs = x.to(work)
        n = m.sum(-1, keepdim=True)  # [B, 1]
        srt = torch.where(m, xs, torch.full_like(xs, torch.inf)).sort(-1).values  # valid values first
        places = torch.arange(x.shape[-1], device=x.device)
        prefix = torch.cat([xs.new_zeros(*x.shape[:-1], 1), torch.where(places < n, srt, 0).cumsum(-1)], -1)
        below = torch.minimum(torch.searchsorted(srt, xs, right=False), n)  # p_j: valid values < x_j
        upto = torch.minimum(torch.searchsorted(srt, xs, right=True), n)  # q_j: valid values <= x_j
        total = prefix.gather(-1, n)
        a = below * xs - prefix.gather(-1, below) + (total - prefix.gather(-1, upto)) - (n - upto) * xs
        ctx.save_for_backward(xs, m, below, upto, n)
        return a.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # differentiable in ``grad`` (double backward works)
        xs, m, below, upto, n = ctx.saved_tensors
        g = grad.to(xs.dtype)
        srt, order = xs.sort(-1)
        prefix = torch.cat([g.new_zeros(*g.shape[:-1], 1), g.gather(-1, order).cumsum(-1)], -1)
        lo = torch.searchsorted(srt, xs, right=False)  # all j (valid or not) with x_j < x_t
        hi = torch.searchsorted(srt, xs, right=True)
        signed = prefix.gather(-1, lo) - (prefix[..., -1:] - prefix.gather(-1, hi))  # sum_j g_j sign(x_t - x_j)
        d_x = g * (below - (n - upto)).to(g.dtype) + m.to(g.dtype) * signed
        return d_x.to(grad.dtype), None


def pairwise_abs_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_k mask[..., k] * |x[..., j] - x[..., k]|`` for every ``j``: ``[B, N]`` in ``O(B N log N)``.

    Equal (up to rounding) to ``((x[..., :, None] - x[..., None, :]).abs() * mask[..., None, :]).sum(-1)``,
    with the same gradient (``abs'(0) = 0`` at ties), without the ``[B, N, N]`` tensor (Grover et al. 2019,
    the ``A_s 1`` term of NeuralSort).

    Args:
        x: ``[B, N]`` float, finite.
        mask: ``[B, N]`` bool, the ``k`` that count.
    """
    return _PairwiseAbsSum.apply(x, mask)


def neural_sort(scores: torch.Tensor, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """NeuralSort relaxed permutation matrix (Grover et al. 2019, eq. 5), descending, masked.

    For a request with ``n`` valid candidates, row ``r`` (1-based) over valid columns ``j`` is
    ``softmax_j(((n + 1 - 2r) s_j - sum_{k valid} |s_j - s_k|) / tau)``; i.e. exactly NeuralSort of the
    valid candidates alone. As ``tau -> 0`` it tends to the hard permutation matrix; ties share mass.

    Cost: ``sum_k |s_j - s_k|`` takes ``O(N log N)`` per request (:func:`pairwise_abs_sum`); the logits are
    one fused ``[B, N, N]`` multiply-add, then the softmax: no ``[B, N, N]`` difference tensor.

    Args:
        scores: ``[B, N]`` float scores (higher = earlier).
        tau: temperature > 0.
        mask: optional ``[B, N]`` bool, ``True`` at valid candidates.

    Returns:
        ``[B, N, N]`` tensor of ``scores.dtype``; see the module docstring for the layout.

    Raises:
        ValueError / TypeError: wrong shapes or dtypes, or ``tau <= 0``.
    """
    mask = _check(scores, mask, tau)
    s = torch.where(mask, scores, torch.zeros_like(scores))  # padded scores never enter: zero gradient
    n = mask.sum(-1, keepdim=True).to(s.dtype)  # [B, 1]
    ranks = torch.arange(1, scores.shape[-1] + 1, device=s.device, dtype=s.dtype)
    coef = (n + 1 - 2 * ranks.unsqueeze(0)) / tau  # [B, N] over rows r
    low = torch.finfo(s.dtype).min  # padded columns: coef * 0 + low = low (masked before the softmax)
    neg_a = torch.where(mask, pairwise_abs_sum(s, mask) / -tau, torch.full_like(s, low))  # [B, N] over j
    logits = torch.addcmul(neg_a.unsqueeze(-2), coef.unsqueeze(-1), s.unsqueeze(-2))  # [B, r, j]
    return _softmax_valid_rows(logits, mask)


def soft_sort(
    scores: torch.Tensor, *, tau: float, mask: torch.Tensor | None = None, power: float = 1.0
) -> torch.Tensor:
    """SoftSort relaxed permutation matrix (Prillo & Eisenschlos 2020, eq. 2), descending, masked.

    Row ``r`` over valid columns ``j`` is ``softmax_j(-|sort(s)_r - s_j|^power / tau)`` where ``sort(s)``
    sorts the valid scores in descending order. ``power=1`` is the paper's operator; ``power=2`` is the
    squared-distance variant used by RankTower's sorting loss (Yan & Li 2023, eq. 15).

    Args, returns and raises as :func:`neural_sort`; ``power`` must be positive.
    """
    mask = _check(scores, mask, tau)
    if not power > 0:
        raise ValueError(f"power must be positive, got {power}")
    s = torch.where(mask, scores, torch.zeros_like(scores))
    low = torch.finfo(s.dtype).min
    sorted_s, _ = torch.sort(torch.where(mask, s, torch.full_like(s, low)), dim=-1, descending=True)
    n = mask.sum(-1, keepdim=True)
    row_valid = torch.arange(scores.shape[-1], device=s.device).unsqueeze(0) < n
    sorted_s = torch.where(row_valid, sorted_s, torch.zeros_like(sorted_s))  # no sentinel enters arithmetic
    dist = (sorted_s.unsqueeze(-1) - s.unsqueeze(-2)).abs()
    logits = -(dist**power) if power != 1.0 else -dist
    return _finish(logits, mask, tau)


def hard_sort(scores: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact descending permutation matrix ``[B, N, N]`` (ties broken by slot index), padded last.

    The hard counterpart of :func:`neural_sort` / :func:`soft_sort`: row ``r`` is the one-hot indicator of
    the candidate at place ``r``; rows ``r >= n`` are zero. No gradient.
    """
    mask = _check(scores, mask, 1.0)
    with torch.no_grad():
        low = torch.finfo(scores.dtype).min
        order = torch.sort(
            torch.where(mask, scores, torch.full_like(scores, low)), dim=-1, descending=True, stable=True
        )[1]
        p = torch.nn.functional.one_hot(order, scores.shape[-1]).to(scores.dtype)
        row_valid = torch.arange(scores.shape[-1], device=scores.device).unsqueeze(0) < mask.sum(-1, keepdim=True)
        return p * row_valid.unsqueeze(-1).to(p.dtype)


def soft_topk_membership(p: torch.Tensor, k: int, *, eps: float = 1e-6) -> torch.Tensor:
    """Soft probability that each candidate is among the top ``k``: ``sum_{r<k} P[r, j] / sg(sum_r P[r, j])``.

    The column sum is detached (stop-gradient), as in LCRON (Wang et al. 2025, Sec. 3.3) and ARF: it only
    renormalises NeuralSort's columns, which are not exactly stochastic. ``eps`` (1e-6, as released) keeps
    padded columns (column sum 0) at exactly 0.

    Args:
        p: ``[B, N, N]`` permutation matrix (rows = places, columns = candidates).
        k: number of top places, ``0 <= k``; values above N are clipped to N.

    Returns:
        ``[B, N]`` membership in ``[0, 1]``.
    """
    top, rest = split_column_sums(p, k)
    return top / ((top + rest).detach() + eps)


def split_column_sums(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass of each column in the top ``k`` places and below: ``(sum_{r<k} P[r, j], sum_{r>=k} P[r, j])``.

    Both come from one batched matrix product with a ``[2, N]`` indicator (and so does their gradient),
    instead of two slices and sums over the ``[B, N, N]`` matrix.

    Args:
        p: ``[B, N, N]`` permutation matrix (rows = places, columns = candidates).
        k: number of top places, ``0 <= k``; values above N are clipped to N.

    Returns:
        two ``[B, N]`` tensors; their sum is the column sum of ``p``.
    """
    n = p.shape[-2]
    k = min(max(int(k), 0), n)
    ind = torch.zeros(2, n, dtype=p.dtype, device=p.device)
    ind[0, :k] = 1
    ind[1, k:] = 1
    sums = torch.matmul(ind, p)  # [B, 2, N]
    return sums[..., 0, :], sums[..., 1, :]

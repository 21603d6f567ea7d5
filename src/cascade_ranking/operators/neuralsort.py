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
    if mask.device.type == "cpu" and bool(mask.all()):  # every row valid: the row mask is all ones
        return p
    row_valid = torch.arange(mask.shape[-1], device=mask.device) < mask.sum(-1, keepdim=True)  # [B, N]
    return p * row_valid.unsqueeze(-1).to(p.dtype)


def _tie_groups(srt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position of rows sorted ascending: the first position of its tie group and the last + 1."""
    n = srt.shape[-1]
    pos = torch.arange(n, device=srt.device).expand_as(srt)
    differs = srt[..., 1:] != srt[..., :-1]
    start = torch.cat([torch.ones_like(srt[..., :1], dtype=torch.bool), differs], -1)
    stop = torch.cat([differs, torch.ones_like(srt[..., :1], dtype=torch.bool)], -1)
    first = torch.where(start, pos, 0).cummax(-1).values
    last = torch.where(stop, pos + 1, n).flip(-1).cummin(-1).values.flip(-1)
    return first, last


class _PairwiseAbsSum(torch.autograd.Function):
    """``a[b, j] = sum_k m[b, k] |x[b, j] - x[b, k]|`` by one sort and prefix sums, ``O(N log N)`` per row.

    In ascending order, with ``V`` / ``W`` the prefix count / sum of the valid values and ``[f_j, l_j)`` the
    positions of ``x_j``'s tie group: ``a_j = V[f] x_j - W[f] + (W[N] - W[l]) - (V[N] - V[l]) x_j`` (ties
    contribute 0). Computed in float64 for float32 inputs, so the prefix sums lose nothing to cancellation.
    The gradient is that of the ``[B, N, N]`` formula under autograd (``abs'(0) = 0``), also at ties:
    ``dx_t = g_t (V[f_t] - (V[N] - V[l_t])) + m_t sum_j g_j sign(x_t - x_j)``, the last sum from prefix sums
    of ``g`` in the same order (no second sort).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        work = torch.float64 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype
        srt, order = x.to(work).sort(-1)
        w = m.gather(-1, order).to(work)  # validity in sorted order
        zero = srt.new_zeros(*srt.shape[:-1], 1)
        count = torch.cat([zero, w.cumsum(-1)], -1)  # V: [B, N + 1]
        total = torch.cat([zero, (w * srt).cumsum(-1)], -1)  # W
        first, last = _tie_groups(srt)
        below, upto = count.gather(-1, first), count.gather(-1, last)
        n, s_all = count[..., -1:], total[..., -1:]
        a = below * srt - total.gather(-1, first) + (s_all - total.gather(-1, last)) - (n - upto) * srt
        ctx.save_for_backward(order, first, last, w, below - (n - upto))
        return torch.zeros_like(a).scatter_(-1, order, a).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # differentiable in ``grad`` (double backward works)
        order, first, last, w, balance = ctx.saved_tensors
        g = grad.to(w.dtype).gather(-1, order)
        prefix = torch.cat([g.new_zeros(*g.shape[:-1], 1), g.cumsum(-1)], -1)
        signed = prefix.gather(-1, first) - (prefix[..., -1:] - prefix.gather(-1, last))  # sum_j g_j sign(x_t - x_j)
        d = g * balance + w * signed
        return torch.zeros_like(d).scatter(-1, order, d).to(grad.dtype), None


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

    Args:
        scores: ``[B, N]`` float scores (higher = earlier).
        tau: temperature > 0.
        mask: optional ``[B, N]`` bool, ``True`` at valid candidates.
        power: exponent of the distance, > 0.

    Returns:
        ``[B, N, N]`` tensor of ``scores.dtype`` (layout as :func:`neural_sort`).

    Raises:
        ValueError / TypeError: wrong shapes or dtypes, ``tau <= 0`` or ``power <= 0``.
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

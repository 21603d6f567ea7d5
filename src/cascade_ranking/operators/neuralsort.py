"""NeuralSort: the relaxed permutation matrix of Grover et al. (ICLR 2019), masked, and its soft top-k.

Layout of the returned ``P`` (shared with :mod:`.softsort`): ``[B, N, N]``, row ``r`` (0-based; rank
``r + 1``) is a soft indicator of the candidate at the ``r``-th place of the **descending** order. Rows are
stochastic over the valid candidates. Padded candidates are sorted last: for a request with ``n`` valid
candidates, rows ``r < n`` put no mass on padded columns, rows ``r >= n`` are all zero, and padded scores
receive exactly zero gradient. With every candidate valid the result is the operator of the paper, unchanged.

Reference:
    Grover, Wang, Zweig, Ermon. "Stochastic Optimization of Sorting Networks via Continuous Relaxations."
    ICLR 2019 (NeuralSort, eq. 5: ``P[r, :] = softmax(((n + 1 - 2r) s - A_s 1) / tau)``).
"""

from __future__ import annotations

import torch

from ._common import check_k, check_scores, soft_topk_membership, softmax_valid_rows

__all__ = ["neural_sort", "neuralsort_topk", "pairwise_abs_sum"]


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
    mask = check_scores(scores, mask, tau)
    s = torch.where(mask, scores, torch.zeros_like(scores))  # padded scores never enter: zero gradient
    n = mask.sum(-1, keepdim=True).to(s.dtype)  # [B, 1]
    ranks = torch.arange(1, scores.shape[-1] + 1, device=s.device, dtype=s.dtype)
    coef = (n + 1 - 2 * ranks.unsqueeze(0)) / tau  # [B, N] over rows r
    low = torch.finfo(s.dtype).min  # padded columns: coef * 0 + low = low (masked before the softmax)
    neg_a = torch.where(mask, pairwise_abs_sum(s, mask) / -tau, torch.full_like(s, low))  # [B, N] over j
    logits = torch.addcmul(neg_a.unsqueeze(-2), coef.unsqueeze(-1), s.unsqueeze(-2))  # [B, r, j]
    return softmax_valid_rows(logits, mask)


def neuralsort_topk(
    scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Soft top-``k`` membership from NeuralSort: ``sum_{r<k} P[r, j] / (sg(sum_r P[r, j]) + eps)``, ``[B, N]``.

    ``P = neural_sort(scores, tau=tau, mask=mask)``; the normalisation is LCRON's (Wang et al. 2025, Sec. 3.3).
    Time and memory ``O(B N^2)`` (the ``[B, N, N]`` matrix). With ``k >= n`` every valid candidate gets
    ``c / (c + eps)`` (1 up to ``eps``); padded candidates get 0. As ``tau -> 0``: the hard top-``k`` indicator
    (ties at the ``k``-th place share it).

    Raises:
        ValueError / TypeError: as :func:`neural_sort`; ``k`` not an integer ``>= 0``.
    """
    k = check_k(k)
    return soft_topk_membership(neural_sort(scores, tau=tau, mask=mask), k, eps=eps)[0]

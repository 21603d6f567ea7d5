r"""LapSum soft top-k (Struski et al., ICML 2025): a Laplace-CDF threshold, ``O(N log N)`` per request.

With ``F`` the standard Laplace CDF (``F(x) = e^x / 2`` for ``x <= 0``, ``1 - e^{-x} / 2`` above) and the
valid scores ``s`` scaled by ``alpha = tau``, the membership of candidate ``j`` is

.. math::

    p_j = F\big(s_j / \alpha - b\big)\quad\text{with } b \text{ solving}\quad
    \mathrm{LapSum}(b) = \textstyle\sum_{j \in V} F(s_j / \alpha - b) = k,

so memberships sum to ``k`` exactly. LapSum is a sum of Laplace CDFs, piecewise a combination of
exponentials: after one sort the equation is solved in closed form on the interval between consecutive
sorted scores that holds ``b`` (prefix ``logcumsumexp`` sums, a ``searchsorted`` and a quadratic in
``e^b``): ``O(N log N)`` time, ``O(N)`` memory. The gradient is the implicit one,
``dp_j / ds_i = f(x_j) (delta_ij - f(x_i) / sum_l f(x_l)) / alpha`` with ``f = F'``, ``x = s / alpha - b``.
As ``alpha -> 0`` ``p`` tends to the hard top-``k`` indicator (a tie straddling the ``k``-th place shares it).

Reference: Struski, Bednarczyk, Podolak, Tabor. "LapSum - One Method to Differentiate Them All: Ranking,
Sorting and Top-k Selection", ICML 2025 (the LapSum function and its closed-form inverse, Sec. 3; top-k as
``F(s_j - b)`` with ``LapSum(b) = k``). The released comparison (GitHub zhangzhen97/DFTOPK, ``lapsum.py``,
``SoftTopK``) solves the same equation on the same intervals; ours adds masks (masked = deleted, membership
0, zero gradient) and defines ``k >= n`` (every valid candidate 1, zero gradient) and ``k = 0`` (all 0).
Only first derivatives are exact (the threshold's gradient is implicit, detached from higher orders).
"""

from __future__ import annotations

import torch

from ._common import threshold_inputs

__all__ = ["lapsum_topk"]


def _interval_terms(t: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ascending ``t [B, N]`` (valid first): ``G(t_i) = sum_j F(t_i - t_j)``, ``eB_i``, ``eA_i`` (float64).

    ``eB_i = sum_{j <= i} e^{t_j - t_i}`` and ``eA_i = sum_{j >= i, valid} e^{t_i - t_j}``; then
    ``G(t_i) = (2 i + 1 + eA_i - eB_i) / 2`` (``+inf`` at padded positions).
    """
    ninf = torch.full_like(t, float("-inf"))
    t0 = torch.where(valid, t, torch.zeros_like(t))
    log_b = torch.logcumsumexp(torch.where(valid, t0, ninf), -1) - t0
    log_a = torch.logcumsumexp(torch.where(valid, -t0, ninf).flip(-1), -1).flip(-1) + t0
    e_b, e_a = log_b.exp(), log_a.exp()
    pos = torch.arange(t.shape[-1], device=t.device, dtype=t.dtype)
    g = torch.where(valid, (2 * pos + 1 + e_a - e_b) / 2, torch.full_like(t, float("inf")))
    return g, e_b, e_a


def _threshold(z: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """``b [B, 1]`` with ``sum_{j valid} F(z_j - b) = k`` (rows with ``0 < k < n``; others arbitrary), no grad."""
    work = z.detach().to(torch.float64)
    t, order = torch.where(mask, work, torch.full_like(work, float("inf"))).sort(-1)
    valid = mask.gather(-1, order)
    n = valid.sum(-1, keepdim=True)
    w = (n - k).to(t.dtype)  # sum_j F(b - t_j) = n - k candidates "below" b
    g, e_b, e_a = _interval_terms(t, valid)
    i = torch.searchsorted(g.contiguous(), w.contiguous())  # first i with G(t_i) >= w; 0 <= i <= n
    last = t.shape[-1] - 1
    lo, hi = (i - 1).clamp(0, last), i.clamp(0, last)
    t_lo, t_hi = t.gather(-1, lo), t.gather(-1, hi)
    big_l = torch.where(i > 0, e_b.gather(-1, lo), torch.zeros_like(w))
    big_r = torch.where(i < n, e_a.gather(-1, hi), torch.zeros_like(w))
    gap = torch.where((i > 0) & (i < n), t_lo - t_hi, torch.zeros_like(w))
    e = w - i.to(t.dtype)
    root = torch.sqrt(e * e + big_l * big_r * gap.exp())
    up = t_hi + torch.log((e + root).clamp_min(1e-300) / big_r.clamp_min(1e-300))  # e > 0: X = (e + root) / 2
    down = t_lo - torch.log((root - e).clamp_min(1e-300) / big_l.clamp_min(1e-300))  # e <= 0: Y = (root - e) / 2
    return torch.where(e > 0, up, down).to(z.dtype)


def lapsum_topk(scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """LapSum soft top-``k`` membership ``[B, N]`` in ``[0, 1]``, summing to ``min(k, n)`` per request.

    Time ``O(B N log N)`` (one sort), memory ``O(B N)``. Masked candidates: 0 with zero gradient; ``k >= n``:
    1 at every valid candidate; ``k = 0``: all 0.

    Args:
        scores: ``[B, N]`` float scores (higher = better).
        k: number of candidates kept, an integer ``>= 0``.
        tau: the Laplace scale ``alpha > 0`` (score units).
        mask: optional ``[B, N]`` bool, ``True`` at valid candidates.

    Raises:
        ValueError / TypeError: wrong shapes or dtypes, ``tau <= 0``, ``k`` not an integer ``>= 0``.
    """
    mask, k, z, inside, kept = threshold_inputs(scores, k, mask, tau)
    if scores.shape[-1] == 0 or not bool(inside.any()):
        return kept
    b0 = torch.where(inside, _threshold(z, mask & inside, k), torch.zeros_like(z[..., :1]))  # finite everywhere
    with torch.no_grad():
        dens = torch.where(mask, 0.5 * torch.exp(-(z - b0).abs()), torch.zeros_like(z))
        weight = dens / dens.sum(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    b = b0 + (weight * (z - z.detach())).sum(-1, keepdim=True)  # value b0, gradient db/dz = f / sum f
    x = z - b
    half_tail = 0.5 * torch.exp(-x.abs())
    p = torch.where(x > 0, 1.0 - half_tail, half_tail)
    return torch.where(inside, torch.where(mask, p, torch.zeros_like(p)), kept)

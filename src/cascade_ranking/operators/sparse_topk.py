r"""Sparse soft top-k (Sander, Puigcerver, Djolonga, Peyré, Blondel, ICML 2023), ``O(N log N)`` per request.

The soft top-``k`` mask with quadratic regularisation ``tau`` is the solution of

.. math::

    y^\star(s) = \arg\max_{y \in \mathcal P(w)} \langle y, s\rangle - \tfrac{\tau}{2}\lVert y\rVert^2,
    \qquad w = (\underbrace{1, \dots, 1}_{k}, 0, \dots, 0),

where the permutahedron ``P(w)`` is the capped simplex ``{y in [0, 1]^n : sum_j y_j = k}``. Equivalently
(Sander et al. 2023, Sec. 3, via Blondel et al. 2020's isotonic form
``y = (s - v_{sigma^-1}) / tau`` with ``v`` the decreasing isotonic regression of ``sort(s) - tau w``) it is the
Euclidean projection of ``s / tau`` onto the capped simplex: ``y_j = clip(s_j / tau - mu, 0, 1)`` with ``mu``
such that ``sum_j y_j = k``. We find ``mu`` exactly from the ``2n`` breakpoints of the piecewise-linear
``g(mu) = sum_j clip(s_j / tau - mu, 0, 1)`` (one sort, prefix sums, ``searchsorted``): ``O(N log N)`` time,
``O(N)`` memory. The result is *sparse*: candidates far below the cut-off get exactly 0, far above exactly 1,
the others ``s_j / tau - mu`` (gradient ``(delta_ij - 1/|F|) / tau`` inside the free set ``F``, 0 outside).
As ``tau -> 0`` it is the hard top-``k`` indicator (a tie straddling the ``k``-th place shares it).

Reference: Sander, Puigcerver, Djolonga, Peyré, Blondel. "Fast, Differentiable and Sparse Top-k: a Convex
Analysis Perspective", ICML 2023 (the top-k mask as a regularised linear program over the permutahedron,
Sec. 3, with the ``p = 2`` regulariser). The DFTopK comparison (GitHub zhangzhen97/DFTOPK,
``google_top_k.py``) computes the same mask by a Dykstra isotonic solver with ``l = tau = 1``; here masked
candidates are deleted (0, zero gradient), ``k >= n`` keeps every valid candidate (1), ``k = 0`` gives 0.
"""

from __future__ import annotations

import torch

from ._common import threshold_inputs

__all__ = ["sparse_topk"]


def _free_sets(z: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sets of the projection: ``upper`` (``y = 1``) and ``free`` (``0 < y < 1``), ``[B, N]`` bool, no grad.

    Rows need ``0 < k < n``. ``g`` is evaluated at every breakpoint ``t`` in ``{z_j, z_j - 1}``: with ``z``
    ascending and prefix sums, ``g(t) = #{z >= t + 1} + sum_{t < z < t + 1} (z - t)``; ``mu`` lies between the
    last breakpoint with ``g >= k`` and the next one, where the sets are constant (read at the midpoint).
    """
    work = z.detach().to(torch.float64)
    inf = torch.full_like(work, float("inf"))
    za = torch.where(mask, work, inf).sort(-1).values  # ascending, padded last
    n = mask.sum(-1, keepdim=True)
    csum = torch.cat([torch.zeros_like(za[..., :1]), torch.where(torch.isinf(za), 0.0, za).cumsum(-1)], -1)
    breaks = torch.cat([torch.where(mask, work, inf), torch.where(mask, work - 1.0, inf)], -1).sort(-1).values
    finite = torch.isfinite(breaks)
    t = torch.where(finite, breaks, torch.zeros_like(breaks))
    i_lo = torch.searchsorted(za, t.contiguous(), right=True)  # #{z <= t}
    i_hi = torch.searchsorted(za, (t + 1.0).contiguous(), right=False)  # #{z < t + 1}
    mid_sum = csum.gather(-1, i_hi) - csum.gather(-1, i_lo)
    g = (n - i_hi) + mid_sum - t * (i_hi - i_lo)
    g = torch.where(finite, g, torch.full_like(g, -1.0))
    a = ((g >= k).sum(-1, keepdim=True) - 1).clamp(0, breaks.shape[-1] - 2)
    mid = 0.5 * (t.gather(-1, a) + t.gather(-1, a + 1))
    upper = mask & (work >= mid + 1.0)
    free = mask & (work > mid) & (work < mid + 1.0)
    return upper, free


def sparse_topk(scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse soft top-``k`` membership ``[B, N]`` in ``[0, 1]``, summing to ``min(k, n)`` per request.

    Time ``O(B N log N)`` (sorts and ``searchsorted``), memory ``O(B N)``. Masked candidates: 0 with zero
    gradient; ``k >= n``: 1 at every valid candidate; ``k = 0``: all 0. Arguments and errors as
    :func:`cascade_ranking.operators.lapsum_topk`, except ``tau``: the regularisation strength ``> 0`` (score
    units; the width of the soft band).
    """
    mask, k, z, inside, kept = threshold_inputs(scores, k, mask, tau)
    if scores.shape[-1] == 0 or not bool(inside.any()):
        return kept
    upper, free = _free_sets(z, mask & inside, k)
    n_free = free.sum(-1, keepdim=True)
    free_sum = torch.where(free, z, torch.zeros_like(z)).sum(-1, keepdim=True)
    mu = (free_sum - (k - upper.sum(-1, keepdim=True))) / n_free.clamp_min(1)
    y = torch.where(upper, torch.ones_like(z), torch.where(free, (z - mu).clamp(0.0, 1.0), torch.zeros_like(z)))
    return torch.where(inside, y, kept)

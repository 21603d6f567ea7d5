"""SoftSort: the relaxed permutation matrix of Prillo & Eisenschlos (ICML 2020), masked, and its soft top-k.

Same layout and masking as :func:`cascade_ranking.operators.neural_sort` (descending rows, padded last).

Reference:
    Prillo, Eisenschlos. "SoftSort: A Continuous Relaxation for the argsort Operator." ICML 2020
    (eq. 2: ``P[r, :] = softmax(-d(sort(s)_r, s) / tau)``, ``d = |.|``; RankTower uses ``d = (.)^2``).
"""

from __future__ import annotations

import torch

from ._common import check_k, check_scores, soft_topk_membership, softmax_valid_rows

__all__ = ["soft_sort", "softsort_topk"]


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
    mask = check_scores(scores, mask, tau)
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
    logits = (logits / tau).masked_fill(~mask.unsqueeze(-2), torch.finfo(logits.dtype).min)
    return softmax_valid_rows(logits, mask)


def softsort_topk(
    scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Soft top-``k`` membership ``[B, N]`` from SoftSort (``power=1``), normalised as NeuralSort's.

    Time ``O(B N log N)`` for the sort plus ``O(B N^2)`` for the matrix; memory ``O(B N^2)``. ``k >= n``, masks
    and the ``tau -> 0`` limit behave as for NeuralSort.

    Raises:
        ValueError / TypeError: as :func:`soft_sort`; ``k`` not an integer ``>= 0``.
    """
    k = check_k(k)
    return soft_topk_membership(soft_sort(scores, tau=tau, mask=mask), k, eps=eps)[0]

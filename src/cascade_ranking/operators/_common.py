"""Input checks and helpers shared by the relaxed top-k operators (no operator of its own).

Conventions of the package: ``scores`` is ``[B, N]`` floating, higher = better; ``mask`` is ``[B, N]`` bool,
``True`` at valid candidates; a masked candidate is *deleted*: it takes no place, its membership is exactly 0
and its score gets exactly zero gradient, so the result equals the operator applied to the valid candidates
alone. ``n`` below is a request's number of valid candidates.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_scores",
    "check_k",
    "threshold_inputs",
    "softmax_valid_rows",
    "hard_sort",
    "hard_topk",
    "split_column_sums",
    "soft_topk_membership",
]


def check_scores(scores: torch.Tensor, mask: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Validate ``scores [B, N]`` (floating), ``mask`` (``None`` or ``[B, N]`` bool) and ``tau > 0``.

    Returns:
        the mask (all ``True`` when ``mask`` is ``None``).

    Raises:
        ValueError: wrong shapes or ``tau <= 0``. TypeError: non-float scores or a non-bool mask.
    """
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


def check_k(k: int) -> int:
    """``k`` as a Python int; raises ValueError unless it is an integer ``>= 0``."""
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    return int(k)


def threshold_inputs(
    scores: torch.Tensor, k: int, mask: torch.Tensor | None, tau: float
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared start of the threshold operators (LapSum, sparse top-k), after validating the inputs.

    Returns:
        ``(mask, k, z, inside, kept)``: the mask; ``k``; ``z = s / tau`` ``[B, N]`` with padded scores 0 (they
        never enter: zero gradient); ``inside [B, 1]`` bool, the requests that need a threshold
        (``0 < k < n``); ``kept [B, N]``, the result of the others (1 at valid candidates if ``k > 0``).
    """
    mask = check_scores(scores, mask, tau)
    k = check_k(k)
    z = torch.where(mask, scores, torch.zeros_like(scores)) / tau
    inside = (mask.sum(-1, keepdim=True) > k) & (k > 0)
    kept = torch.where(mask & (k > 0), torch.ones_like(z), torch.zeros_like(z)) + 0.0 * z
    return mask, k, z, inside, kept


def softmax_valid_rows(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(logits [B, N, N])`` over the last axis with rows ``r >= n`` zeroed (``mask [B, N]``).

    ``logits`` hold ``finfo.min`` at padded columns.

    Padded columns need no second mask: in a row with a valid column, ``exp(finfo.min - max)`` is exactly 0.
    """
    p = torch.softmax(logits, dim=-1)
    if mask.device.type == "cpu" and bool(mask.all()):  # every row valid: the row mask is all ones
        return p
    row_valid = torch.arange(mask.shape[-1], device=mask.device) < mask.sum(-1, keepdim=True)  # [B, N]
    return p * row_valid.unsqueeze(-1).to(p.dtype)


def hard_sort(scores: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact descending permutation matrix ``[B, N, N]`` (ties broken by slot index), padded last.

    The hard counterpart of the permutation operators: row ``r`` is the one-hot indicator of the candidate at
    place ``r``; rows ``r >= n`` are zero. No gradient.
    """
    mask = check_scores(scores, mask, 1.0)
    with torch.no_grad():
        low = torch.finfo(scores.dtype).min
        order = torch.sort(
            torch.where(mask, scores, torch.full_like(scores, low)), dim=-1, descending=True, stable=True
        )[1]
        p = torch.nn.functional.one_hot(order, scores.shape[-1]).to(scores.dtype)
        row_valid = torch.arange(scores.shape[-1], device=scores.device).unsqueeze(0) < mask.sum(-1, keepdim=True)
        return p * row_valid.unsqueeze(-1).to(p.dtype)


def hard_topk(scores: torch.Tensor, k: int, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The exact top-``k`` indicator ``[B, N]`` of the valid candidates, ties at the cut-off sharing it.

    ``out_j = clip((k - #{valid s > s_j}) / #{valid s = s_j}, 0, 1)`` at valid candidates, 0 at padded ones:
    with no tie at the ``k``-th place exactly the ``torch.topk`` selection; a tie group straddling it shares
    the remaining places equally (order-invariant); every valid candidate when ``k >= n``. The limit of every
    operator as ``tau -> 0``. One sort and two ``searchsorted``: ``O(B N log N)``, memory ``O(B N)``. No gradient.

    Args:
        scores: ``[B, N]`` float (only compared).
        k: number of candidates kept, an integer ``>= 0``.
        mask: optional ``[B, N]`` bool, ``True`` at valid candidates.

    Raises:
        ValueError / TypeError: as :func:`check_scores`; ``k`` not an integer ``>= 0``.
    """
    mask = check_scores(scores, mask, 1.0)
    k = check_k(k)
    with torch.no_grad():
        x = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
        asc = x.sort(-1).values.contiguous()
        n = mask.sum(-1, keepdim=True)
        lower = torch.searchsorted(asc, x.contiguous(), right=False)  # #{< s_j} (padded -inf included)
        upper = torch.searchsorted(asc, x.contiguous(), right=True)  # #{<= s_j}
        above = (x.shape[-1] - upper).to(scores.dtype)
        tied = (upper - lower).clamp_min(1).to(scores.dtype)
        out = ((k - above) / tied).clamp(0.0, 1.0)
        return torch.where(mask & (n > 0), out, torch.zeros_like(out))


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


def soft_topk_membership(p: torch.Tensor, k: int, *, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft top-``k`` membership of a permutation matrix and its complement, over the detached column sum.

    ``inside(j) = sum_{r<k} P[r, j] / (sg(sum_r P[r, j]) + eps)`` and
    ``outside(j) = sum_{r>=k} P[r, j] / (sg(sum_r P[r, j]) + eps)``: equal to ``1 - inside`` in value (up to
    ``eps``) but with their own gradient paths, as LCRON (Wang et al. 2025, Sec. 3.3, and the released
    ``lcron.py``) and ARF-v2 use them. The column sum is detached: it only renormalises NeuralSort's columns,
    which are not exactly stochastic; ``eps`` (1e-6, as released) keeps padded columns (sum 0) at exactly 0.

    Args:
        p: ``[B, N, N]`` permutation matrix (rows = places, columns = candidates).
        k: number of top places, ``0 <= k``; values above N are clipped to N.

    Returns:
        ``(inside, outside)``, two ``[B, N]`` tensors in ``[0, 1]``.
    """
    top, rest = split_column_sums(p, k)  # one batched matmul over P (and one for its gradient)
    denom = (top + rest).detach() + eps
    return top / denom, rest / denom

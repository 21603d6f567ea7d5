r"""DFTopK: the closed-form relaxed top-k of Zhu, Zhang, Wang et al. 2025, ``O(N)`` per request.

For a request with valid scores ``s`` (``n`` of them) and ``k < n``:

.. math::

    \theta = \tfrac12\big(s_{[k]} + s_{[k+1]}\big),\qquad
    f_j(s) = \sigma\big((s_j - \theta) / \tau\big)

where ``s_[k]`` is the ``k``-th largest valid score. ``theta`` lies between the ``k``-th and ``(k+1)``-th
largest scores, so as ``tau -> 0`` ``f`` tends to the hard top-``k`` indicator (a tie between the ``k``-th
and ``(k+1)``-th scores gives both 1/2). Both order statistics come from a selection (``torch.kthvalue``,
quickselect: ``O(N)`` time, ``O(N)`` memory), not a sort and not an ``N x N`` matrix.

Reference: Zhu, Zhang, Wang et al. "Differentiable Fast Top-K Selection for Large-Scale Recommendation",
arXiv 2510.11472, 2025 (the threshold and sigmoid relaxation of its method section); released code
GitHub zhangzhen97/DFTOPK (``dftopk`` in ``torch/deep_components/loss/two_stage/topk_loss.py``). Where the
paper is silent we match that code: the gradient flows through ``theta`` too (to the two selected scores,
1/2 each); ``tau`` divides ``s - theta``. Added here (the released code has fixed, unpadded lists): masked
candidates are deleted (membership 0, zero gradient), and a request with ``k >= n`` keeps every valid
candidate (membership exactly 1, logit ``+inf``, zero gradient) where ``kthvalue`` would fail.
"""

from __future__ import annotations

import torch

from ._common import check_k, check_scores

__all__ = ["dftopk", "dftopk_logits"]


def dftopk_logits(scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The DFTopK logits ``(s_j - theta) / tau`` ``[B, N]`` (membership = their sigmoid).

    ``+inf`` at valid candidates of requests with ``k >= n`` (all kept), ``-inf`` at padded candidates and
    everywhere when ``k = 0``; otherwise finite. Use with ``F.logsigmoid`` for numerically safe logs.

    Args:
        scores: ``[B, N]`` float scores (higher = better).
        k: number of candidates kept, an integer ``>= 0``.
        tau: temperature ``> 0`` (score units).
        mask: optional ``[B, N]`` bool, ``True`` at valid candidates.

    Raises:
        ValueError / TypeError: wrong shapes or dtypes, ``tau <= 0``, ``k`` not an integer ``>= 0``.
    """
    mask = check_scores(scores, mask, tau)
    k = check_k(k)
    big = torch.finfo(scores.dtype).max
    inf = torch.full_like(scores, float("inf"))
    s = torch.where(mask, scores, torch.zeros_like(scores))  # padded scores never enter: zero gradient
    n_slots = scores.shape[-1]
    if k == 0 or n_slots == 0:
        return torch.where(torch.zeros_like(mask), s, -inf)
    if k >= n_slots:  # every request keeps all its valid candidates
        return torch.where(mask, inf, -inf) + 0.0 * s
    neg = torch.where(mask, -s, torch.full_like(s, big))  # padded candidates: the smallest scores
    kth = torch.kthvalue(neg, k, dim=-1).values  # -(k-th largest valid score), or big when k > n
    nxt = torch.kthvalue(neg, k + 1, dim=-1).values  # -((k+1)-th largest), or big when k >= n
    enough = (mask.sum(-1) > k).unsqueeze(-1)  # [B, 1]
    theta = torch.where(enough, -(0.5 * kth + 0.5 * nxt).unsqueeze(-1), torch.zeros_like(s[..., :1]))
    z = (s - theta) / tau
    return torch.where(mask, torch.where(enough, z, inf), -inf)


def dftopk(scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DFTopK soft top-``k`` membership ``sigmoid((s - theta) / tau)``, ``[B, N]`` in ``[0, 1]`` (module docstring).

    Time and memory ``O(B N)`` (two ``kthvalue`` selections and elementwise work). Masked candidates: 0;
    ``k >= n``: 1 at every valid candidate; ``k = 0``: all 0. Arguments and errors as :func:`dftopk_logits`.
    """
    return torch.sigmoid(dftopk_logits(scores, k, tau=tau, mask=mask))

"""FS-RankNet: full-stage learning to rank with the RankNet pairwise loss, each stage trained alone.

Sources: Zheng et al., "Full Stage Learning to Rank: A Unified Framework for Multi-Stage Systems", WWW 2024
(learn every stage from the whole funnel of the logged system: a candidate that went deeper is preferred to
one filtered earlier); Burges, "From RankNet to LambdaRank to LambdaMART: An Overview", MSR-TR-2010-82
(the pairwise logistic loss ``log(1 + exp(-(s_j - s_l)))`` for ``j`` preferred to ``l``).

Per stage ``i`` and request, with ``G_p`` = the valid candidates at funnel position ``p`` and
``D_p = {l valid : stage_l < p}`` (every candidate filtered earlier):

.. math::

    L_{i,p} = \\frac{1}{|G_p|\\,|D_p|} \\sum_{j \\in G_p} \\sum_{l \\in D_p}
        \\log(1 + e^{-(s_{ij} - s_{il})}), \\qquad L = \\sum_i \\sum_p \\overline{L_{i,p}}

where the overline is the batch mean over the requests in which the pair set of ``p`` is non-empty (top
group vs all lower, next group vs those below, ...; the lowest group has no term).

Matched to the released implementation (kwai/LCRON ``deep_components/loss/{two,three}_stage/
fs_ranknet.py``): groups = funnel positions, normalisation by (lower candidates x group candidates), group
terms summed, stage losses summed (the released scripts back-propagate each into its own model). With
every candidate valid the value is the released one; it never depends on slot order. With padded candidates
(the released code divides by constant group sizes): padded candidates are in no pair and get zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, zero_masked
from .base import detached_parts

__all__ = ["FSRankNetLoss"]


class FSRankNetLoss(StageLoss):
    """FS-RankNet loss: per stage, RankNet pairs of each funnel group against all lower groups.

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: number of ground-truth candidates (unused; kept for the common interface).

    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``label`` is validated but unused (pairs come from
    ``stage``). Returns :class:`LossOutput` with parts ``"ranknet/<i>"``.

    Raises:
        ValueError / TypeError: invalid inputs (see :func:`~.base.check_inputs`).
    """

    method = "fs_ranknet"

    def extra_repr(self) -> str:
        return f"keep={list(self.keep)}"

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        lower = (both & (stage.unsqueeze(-1) > stage.unsqueeze(-2))).to(dtype)  # [b, j, l]: l below j
        same = (both & (stage.unsqueeze(-1) == stage.unsqueeze(-2))).to(dtype)
        n_lower = lower.sum(-1)  # |D_p| seen from each j
        n_group = same.sum(-1)  # |G_p| seen from each j
        in_pairs = n_lower > 0  # j has pairs (valid and not in the lowest group)
        # Per-candidate weight 1 / (|G_p| |D_p|); the group terms are batch-averaged over the requests that
        # have pairs for that group: a request's group p is counted once, by a scatter over positions.
        scale = in_pairs.to(dtype) / (n_group * n_lower).clamp_min(1.0)
        positions, index = torch.unique(torch.where(mask, stage, torch.zeros_like(stage)), return_inverse=True)
        num_pos = positions.numel()
        has_group = torch.zeros(mask.shape[0], num_pos, dtype=dtype, device=mask.device)
        has_group.scatter_reduce_(1, index, in_pairs.to(dtype), reduce="amax")
        groups_per_pos = has_group.sum(0).clamp_min(1.0)  # [P] requests holding each group's pairs
        cand_norm = scale / groups_per_pos[index]  # [B, N]

        parts = {}
        total = torch.zeros((), dtype=dtype, device=mask.device)
        for i, x in enumerate(logits):
            s = zero_masked(x, mask)
            pair = F.softplus(s.unsqueeze(-2) - s.unsqueeze(-1))  # [b, j, l] = log(1 + exp(-(s_j - s_l)))
            per_cand = (pair * lower).sum(-1)
            parts[f"ranknet/{i}"] = (per_cand * cand_norm).sum()
            total = total + parts[f"ranknet/{i}"]
        return LossOutput(loss=total, parts=detached_parts(**parts))

"""RankFlow: joint training of the cascade stages along the flow of candidates (in-batch version).

Source: Qin et al., "RankFlow: Joint Optimization of Multi-Stage Cascade Ranking Systems as Flows",
SIGIR 2022. Each stage learns on the candidates its upstream stage passes to it (the data flow of the
cascade, here taken in-batch from the stages' own scores), with the label of the task; the upstream stage
is also taught by the downstream one: a score distillation (MSE to the downstream scores, detached) and a
rank term that pushes the mean upstream score of the downstream stage's top candidates above that of the
rest. ``alpha`` in the paper trades the two distillation terms; the LCRON paper runs RankFlow with
``alpha = 0`` (Wang et al., ICML 2025).

Per request, ``S_{-1}`` = the valid candidates, ``S_i`` = the top ``keep[i]`` by ``s_i`` within ``S_{i-1}``,
``P_i`` = the top ``keep[i+1]`` by ``s_{i+1}`` within ``S_i`` and ``Q_i = S_i \\ P_i``; target
``t_j = 1[stage_j >= T]`` (``T`` = the top funnel position):

.. math::

    L &= \\sum_{i=0}^{N_s - 1} \\mathrm{mean}_{j \\in S_{i-1}} \\mathrm{BCE}(s_{ij}, t_j)
       + \\lambda_d \\sum_{i=0}^{N_s - 2} \\mathrm{mean}_{j \\in S_i}
         (\\mathrm{sg}(s_{i+1, j}) - s_{ij})^2 \\\\
      &\\quad + \\lambda_r \\sum_{i=0}^{N_s - 2}
        -\\log \\sigma\\big(\\mathrm{mean}_{j \\in P_i} s_{ij} - \\mathrm{mean}_{j \\in Q_i} s_{ij}\\big)

Behaviour matched to the released implementation (kwai/LCRON ``deep_components/loss/{two,three}_stage/
rankflow.py``), where the paper is silent; with every candidate valid and no tied score at a cut-off the
value is the released one:

* positive = the top funnel group (``T = len(keep) + 1``); the selections ``S_i`` are hard top-k of the
  stages' scores (no gradient through the selection);
* weights: ``lambda_d = 1`` always; ``lambda_r`` (``rank_weight``) defaults to 0 for two stages (the
  two-stage script's ``alpha = 0``) and to 1 for three or more stages (the three-stage script adds both
  distillation terms with weight 1);
* the rank term's top set has ``keep[i+1]`` candidates, as in the three-stage script (the two-stage script
  uses 10 of 30; it is inactive there with ``lambda_r = 0``).

Order invariance: a tie of scores straddling a cut-off is shared (each tied candidate counts with the same
fraction, see :func:`._common.topk_weights`) instead of being broken by slot order as ``torch.topk`` does.
Masks (the released code assumes all valid): padded candidates are never selected; every mean is a
per-request mean over the selected valid candidates, then a batch mean over the requests where it is
defined; padded candidates get zero gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, default_top_position, topk_weights, weighted_request_mean, zero_masked
from .base import detached_parts, request_mean

__all__ = ["RankFlowLoss"]


class RankFlowLoss(StageLoss):
    """RankFlow (in-batch) loss for an N-stage cascade (see the module docstring).

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: number of ground-truth candidates (unused; kept for the common interface).
        distill_weight: ``lambda_d``, weight of the score distillation (MSE) terms (default 1).
        rank_weight: ``lambda_r``, weight of the rank distillation terms (default ``None``: 0 for two stages,
            1 for three or more, as released).
        top_position: funnel position of the positives (default ``len(keep) + 1``).

    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``label`` is validated but unused (the target comes
    from ``stage``). Returns :class:`LossOutput` with parts ``"bce/<i>"``, ``"distill/<i>"`` and (when
    ``rank_weight != 0``) ``"rank/<i>"``.

    Raises:
        ValueError / TypeError: invalid hyper-parameters or inputs (see :func:`~.base.check_inputs`).
    """

    method = "rankflow"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        distill_weight: float = 1.0,
        rank_weight: float | None = None,
        top_position: int | None = None,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        n = self.num_stages
        self.distill_weight = float(distill_weight)
        self.rank_weight = (0.0 if n <= 2 else 1.0) if rank_weight is None else float(rank_weight)
        self.top_position = default_top_position(n) if top_position is None else int(top_position)
        if self.top_position < 1:
            raise ValueError(f"rankflow: top_position must be >= 1, got {top_position}")

    def extra_repr(self) -> str:
        return (
            f"keep={list(self.keep)}, distill_weight={self.distill_weight}, rank_weight={self.rank_weight}, "
            f"top_position={self.top_position}"
        )

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        target = (stage >= self.top_position).to(dtype)
        scores = [zero_masked(x, mask) for x in logits]
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), dtype=dtype, device=mask.device)

        def add(name: str, value: torch.Tensor, weight: float = 1.0) -> None:
            nonlocal total
            parts[name] = value
            if weight != 0.0:
                total = total + weight * value

        members = mask.to(dtype)  # S_{i-1}: the candidates stage i learns on
        for i, s in enumerate(scores):
            bce = F.binary_cross_entropy_with_logits(s, target, reduction="none")
            add(f"bce/{i}", request_mean(*weighted_request_mean(bce, members)))
            if i == len(scores) - 1:
                break
            members = topk_weights(s.detach(), members, self.keep[i])  # S_i
            down = scores[i + 1]
            sq = (down.detach() - s) ** 2
            add(f"distill/{i}", request_mean(*weighted_request_mean(sq, members)), self.distill_weight)
            if self.rank_weight != 0.0:
                top = topk_weights(down.detach(), members, self.keep[i + 1])  # P_i
                top_mean, has_top = weighted_request_mean(s, top)
                rest_mean, has_rest = weighted_request_mean(s, members - top)
                rank = -F.logsigmoid(top_mean - rest_mean)
                add(f"rank/{i}", request_mean(rank, has_top & has_rest), self.rank_weight)
        return LossOutput(loss=total, parts=detached_parts(**parts))

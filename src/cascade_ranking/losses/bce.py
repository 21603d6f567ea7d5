"""BCE: every stage trained alone with a pointwise binary cross-entropy (the standard baseline).

Source: the pointwise baseline of the LCRON paper (Wang et al., "Learning Cascade Ranking as One Network",
ICML 2025, arXiv 2503.09492, experiments: the "BCE" baseline): each stage model is a binary classifier of
"exposed by the logged system", trained on the candidates the logged system showed that stage.
Per stage ``i``, with visible set ``V_i = {j valid : stage_j >= f_i}`` and target ``t_j = 1[stage_j >= T]``
(``T`` = the top funnel position):

.. math::

    L_i = \\frac{1}{|V_i|} \\sum_{j \\in V_i} \\mathrm{BCE}(s_{ij}, t_j), \\qquad L = \\sum_i L_i

Behaviour matched to the released implementation (kwai/LCRON ``deep_components/loss/{two,three}_stage/
bce.py``), where the paper is silent; with every candidate valid the value is the released one:

* positive = the top funnel group (RecFlow ``rank_pos`` / ``rerank_pos``), ``T = len(keep) + 1``;
* the visible sets, expressed through funnel positions (never slot order): stage ``i < N_s - 1`` sees
  positions ``>= i`` (retrieval sees all), the last stage sees the top two groups (``>= T - 1``). Two-stage:
  retrieval on all four groups, pre-ranking on ``rank_neg`` + ``rank_pos``; three-stage: retrieval on all,
  pre-ranking on the top four groups, ranking on the top two;
* the stages' losses are summed (the released scripts back-propagate each into its own model; the
  gradients are the same).

With padded candidates (the released code assumes none): the per-request mean is over the visible valid
candidates and the batch mean over requests with at least one; padded candidates get zero gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..types import LossOutput
from ._common import StageLoss, default_top_position, stage_ints, weighted_request_mean, zero_masked
from .base import detached_parts, request_mean

__all__ = ["BCELoss"]


class BCELoss(StageLoss):
    """Pointwise BCE per stage on the candidates the logged system showed it (see the module docstring).

    Args:
        keep: candidates each stage keeps, retrieval first; ``len(keep)`` = number of stages.
        gt_num: number of ground-truth candidates (unused by BCE; kept for the common interface).
        top_position: funnel position of the positives (default ``len(keep) + 1``, RecFlow's top group);
            candidates at this position or above are positives.
        visible_from: per stage, the lowest funnel position it trains on (default
            ``(0, 1, ..., N_s - 2, top_position - 1)``, as released).

    Called as ``loss_fn(logits, label=, mask=, stage=)``; ``label`` is validated but unused (the target comes
    from ``stage``). Returns :class:`LossOutput` with parts ``"bce/<i>"``.

    Raises:
        ValueError / TypeError: invalid hyper-parameters or inputs (see :func:`~.base.check_inputs`).
    """

    method = "bce"

    def __init__(
        self,
        *,
        keep: Sequence[int],
        gt_num: int = 10,
        top_position: int | None = None,
        visible_from: Sequence[int] | None = None,
    ) -> None:
        super().__init__(keep=keep, gt_num=gt_num)
        n = self.num_stages
        self.top_position = default_top_position(n) if top_position is None else int(top_position)
        if self.top_position < 1:
            raise ValueError(f"bce: top_position must be >= 1, got {top_position}")
        if visible_from is None:
            visible_from = [min(i, self.top_position - 1) for i in range(n - 1)] + [
                self.top_position - 1 if n > 1 else 0
            ]
        self.visible_from = stage_ints("bce", "visible_from", visible_from, n, minimum=0)

    def extra_repr(self) -> str:
        return f"keep={list(self.keep)}, top_position={self.top_position}, visible_from={list(self.visible_from)}"

    def _compute(self, logits, label, mask, stage) -> LossOutput:
        dtype = logits[0].dtype
        target = (stage >= self.top_position).to(dtype)
        parts = {}
        total = torch.zeros((), dtype=dtype, device=mask.device)
        for i, (x, lowest) in enumerate(zip(logits, self.visible_from, strict=True)):
            visible = (mask & (stage >= lowest)).to(dtype)
            bce = F.binary_cross_entropy_with_logits(zero_masked(x, mask), target, reduction="none")
            per_request, has = weighted_request_mean(bce, visible)
            parts[f"bce/{i}"] = request_mean(per_request, has)
            total = total + parts[f"bce/{i}"]
        return LossOutput(loss=total, parts=detached_parts(**parts))

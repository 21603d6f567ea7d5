r"""Learning-to-rank losses compared with RankTower's hybrid loss (its Table 3): Softmax, ApproxNDCG, RankNet.

Yan & Li 2023 (RankTower), Sec. 5.3.2 compare the hybrid loss with "several widely used ranking losses in the
industry"; the paper names them and cites their sources (Sec. 2.2) but gives no formulas, so each follows its
own paper. Each is applied, alone, to **all valid samples** of a request (impression, candidate and random
samples: the AM-Rankmax sample space) with the hard labels ``y`` (higher is better), per stage, and averaged
over the requests where it is defined; a batch with none gives exactly 0 and zero gradients; padded slots get
exactly zero gradient; nothing depends on slot order. (Rankmax and AM-Rankmax, SoftSort sorting and the hybrid
live in :mod:`cascade_ranking.losses.ranktower`.)

.. math::

    L_{softmax} &= -\sum_i \frac{y_i}{\sum_j y_j} \log \frac{e^{z_i}}{\sum_j e^{z_j}}
        && \text{(ListNet's top-one form, Cao et al., ICML 2007; labels must be} \ge 0) \\
    \hat\pi_i &= 1 + \sum_{j \ne i} \sigma\big((z_j - z_i) / T\big),\quad
    L_{ApproxNDCG} = -\frac{1}{\mathrm{IDCG}} \sum_i \frac{2^{y_i} - 1}{\log_2(1 + \hat\pi_i)}
        && \text{(Qin et al., Inf. Retr. 2010; Bruch et al., SIGIR 2019)} \\
    L_{RankNet} &= \frac{1}{|P|} \sum_{(i, j) \in P} \log\big(1 + e^{-(z_i - z_j)}\big),\
        P = \{(i, j): y_i > y_j\}
        && \text{(Burges et al., ICML 2005)}

``IDCG`` is the DCG of the labels sorted descending with exact ranks ``1..n``; ApproxNDCG's temperature
``T = 0.1`` is TF-Ranking's default (``ApproxNDCGLoss``); a request counts when ``IDCG > 0`` (softmax: when
``sum y > 0``; RankNet: when it has an ordered pair).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import zero_masked
from .ranktower import _check_positive, _masked_log_softmax, _RankTowerStageLoss

__all__ = ["ApproxNDCGLoss", "RankNetLoss", "SoftmaxLoss", "approx_ndcg_terms", "ranknet_terms", "softmax_terms"]


def softmax_terms(scores: torch.Tensor, label: torch.Tensor, space: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy with the label distribution ``y / sum y`` over ``space``, per request.

    Args:
        scores: ``[B, N]`` float logits.
        label: ``[B, N]`` float labels ``>= 0`` on ``space``.
        space: ``[B, N]`` bool.

    Returns:
        ``(loss [B], has [B] bool)``; ``has`` = ``sum y > 0``.
    """
    y = zero_masked(label, space)
    total = y.sum(-1, keepdim=True)
    target = y / total.clamp_min(torch.finfo(y.dtype).tiny)
    per = -(target * _masked_log_softmax(zero_masked(scores, space), space)).sum(-1)
    return per, total.squeeze(-1) > 0


def approx_ndcg_terms(
    scores: torch.Tensor, label: torch.Tensor, space: torch.Tensor, *, temperature: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative ApproxNDCG over ``space``, per request (module docstring).

    Args:
        scores: ``[B, N]`` float logits.
        label: ``[B, N]`` float graded labels.
        space: ``[B, N]`` bool.
        temperature: ``T`` of the sigmoid rank approximation.

    Returns:
        ``(loss [B], has [B] bool)``: ``-approxDCG / IDCG``; ``has`` = ``IDCG > 0``.
    """
    s = zero_masked(scores, space)
    gain = zero_masked(torch.exp2(zero_masked(label, space)) - 1.0, space)
    pair = space.unsqueeze(-1) & space.unsqueeze(-2) & ~torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    above = torch.sigmoid((s.unsqueeze(-2) - s.unsqueeze(-1)) / temperature)  # [B, i, j]: sigma((z_j - z_i) / T)
    rank = 1.0 + torch.where(pair, above, torch.zeros_like(above)).sum(-1)
    dcg = (gain / torch.log2(1.0 + rank)).sum(-1)
    ideal = torch.sort(gain, dim=-1, descending=True)[0]
    positions = torch.arange(2, s.shape[-1] + 2, device=s.device, dtype=s.dtype)
    idcg = (ideal / torch.log2(positions)).sum(-1)
    has = idcg > 0
    return torch.where(has, -dcg / idcg.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(dcg)), has


def ranknet_terms(scores: torch.Tensor, label: torch.Tensor, space: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RankNet over the ordered pairs of ``space`` (ties form no pair), mean per request.

    Args:
        scores: ``[B, N]`` float logits.
        label: ``[B, N]`` float graded labels.
        space: ``[B, N]`` bool.

    Returns:
        ``(loss [B], has [B] bool)``; ``has`` = the request has an ordered pair.
    """
    s, y = zero_masked(scores, space), zero_masked(label, space)
    pair = space.unsqueeze(-1) & space.unsqueeze(-2) & (y.unsqueeze(-1) > y.unsqueeze(-2))
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)
    cost = torch.where(pair, F.softplus(-diff), torch.zeros_like(diff)).sum((-2, -1))
    count = pair.sum((-2, -1))
    return cost / count.clamp_min(1).to(s.dtype), count > 0


def _valid(spaces) -> torch.Tensor:
    return spaces.impression | spaces.candidate | spaces.random


class SoftmaxLoss(_RankTowerStageLoss):
    """``"softmax"``: softmax cross-entropy on all valid samples (Table 3). Parts ``"softmax/<i>"``.

    Args: ``keep``, ``gt_num`` (unused), ``top_position``, ``random_position`` as the RankTower losses.

    Raises:
        ValueError: at call time, a negative label at a valid candidate.
    """

    method = "softmax"

    def _terms(self, scores, label, teacher, spaces):
        valid = _valid(spaces)
        if bool((label < 0).logical_and(valid).any()):
            raise ValueError(f"{self.method}: labels must be >= 0 at valid candidates (they weigh the softmax)")
        yield "softmax", softmax_terms(scores, label, valid)


class ApproxNDCGLoss(_RankTowerStageLoss):
    """``"approx_ndcg"``: negative ApproxNDCG on all valid samples (Table 3). Parts ``"approx_ndcg/<i>"``.

    Args:
        keep, gt_num, top_position, random_position: as the RankTower losses.
        temperature: ``T`` (default 0.1, TF-Ranking's).
    """

    method = "approx_ndcg"

    def __init__(self, *, keep: Sequence[int], gt_num: int = 10, temperature: float = 0.1, **spaces) -> None:
        super().__init__(keep=keep, gt_num=gt_num, **spaces)
        _check_positive(self.method, temperature=temperature)
        self.temperature = float(temperature)

    def _terms(self, scores, label, teacher, spaces):
        yield "approx_ndcg", approx_ndcg_terms(scores, label, _valid(spaces), temperature=self.temperature)


class RankNetLoss(_RankTowerStageLoss):
    """``"ranknet"``: RankNet on all valid samples (Table 3). Parts ``"ranknet/<i>"``.

    Args: ``keep``, ``gt_num`` (unused), ``top_position``, ``random_position`` as the RankTower losses.
    """

    method = "ranknet"

    def _terms(self, scores, label, teacher, spaces):
        yield "ranknet", ranknet_terms(scores, label, _valid(spaces))

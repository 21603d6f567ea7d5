"""Table 3's comparison losses (Softmax, ApproxNDCG, RankNet) against numpy and scikit-learn; masks and ties.

The shared invariances (all-masked -> 0, order, extreme logits, masked gradients) run for every registered loss
in tests/test_losses_common.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from cascade_ranking import losses
from cascade_ranking.losses.prerank_ltr import approx_ndcg_terms
from test_ranktower_loss import batch_mean, full_stage_batch, np_log_softmax, run

NAMES = ["softmax", "approx_ndcg", "ranknet"]


def ref_softmax(s, y):
    if y.sum() <= 0:
        return None
    return float(-((y / y.sum()) * np_log_softmax(s)).sum())


def ref_approx_ndcg(s, y, temperature):
    gains = 2.0**y - 1.0
    ideal = sorted(gains.tolist(), reverse=True)
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    if idcg <= 0:
        return None
    dcg = 0.0
    for i in range(len(s)):
        rank = 1.0 + sum(1.0 / (1.0 + math.exp(-(s[j] - s[i]) / temperature)) for j in range(len(s)) if j != i)
        dcg += gains[i] / math.log2(1.0 + rank)
    return -dcg / idcg


def ref_ranknet(s, y):
    pairs = [(i, j) for i in range(len(s)) for j in range(len(s)) if y[i] > y[j]]
    if not pairs:
        return None
    return float(np.mean([math.log1p(math.exp(-(s[i] - s[j]))) for i, j in pairs]))


def reference(name, logits, label, mask, **hp):
    out = []
    for b in range(logits.shape[0]):
        v = np.flatnonzero(mask[b])
        s, y = logits[b, v], label[b, v]
        if name == "softmax":
            out.append(ref_softmax(s, y))
        elif name == "approx_ndcg":
            out.append(ref_approx_ndcg(s, y, hp.get("temperature", 0.1)))
        else:
            out.append(ref_ranknet(s, y))
    return batch_mean(out)


@pytest.mark.parametrize("labels", ["graded", "paper"])
@pytest.mark.parametrize("name", NAMES)
def test_each_loss_matches_its_numpy_transcription(name, labels):
    logits, label, mask, stage, _ = full_stage_batch(seed=20, labels=labels)
    hp = {"temperature": 0.7} if name == "approx_ndcg" else {}
    out, grads = run(losses.build(name, keep=[8], **hp), [logits], label, mask, stage)
    want = reference(name, logits.numpy(), label.numpy(), mask.numpy(), **hp)
    assert out.loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert (grads[0][~mask] == 0).all() and torch.isfinite(grads[0]).all()


def test_approx_ndcg_tends_to_scikit_learns_ndcg_at_small_temperature():
    """With well separated scores and T -> 0 the approximate ranks are exact: -loss = NDCG with gains 2^y - 1."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randperm(12, generator=g).double().view(2, 6) * 3.0
    label = torch.randint(0, 4, (2, 6), generator=g).double()
    label[:, 0] = 3.0
    mask = torch.ones(2, 6, dtype=torch.bool)
    per, has = approx_ndcg_terms(scores, label, mask, temperature=1e-3)
    want = [ndcg_score([2.0 ** label[b].numpy() - 1.0], [scores[b].numpy()]) for b in range(2)]
    assert has.all()
    np.testing.assert_allclose(-per.numpy(), want, rtol=1e-9)


def test_ties_and_degenerate_requests():
    """Tied labels form no RankNet pair; all-zero labels define neither softmax nor ApproxNDCG: loss 0."""
    logits, label, mask, stage, _ = full_stage_batch(seed=21)
    for name in NAMES:
        out, grads = run(losses.build(name, keep=[8]), [logits], torch.zeros_like(label), mask, stage)
        assert out.loss.item() == 0.0 and (grads[0] == 0).all()
    tied, _ = run(losses.build("ranknet", keep=[8]), [logits], torch.ones_like(label), mask, stage)
    assert tied.loss.item() == 0.0


def test_softmax_rejects_negative_labels_and_approx_ndcg_a_bad_temperature():
    logits, label, mask, stage, _ = full_stage_batch(seed=22)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        losses.build("softmax", keep=[8])([logits], label=label - 10.0, mask=mask, stage=stage)
    with pytest.raises(ValueError, match="temperature"):
        losses.build("approx_ndcg", keep=[8], temperature=0.0)

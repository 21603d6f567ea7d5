"""The ``dftopk`` method (Zhu et al. 2025): DFTopK's cascade loss vs a numpy float64 transcription.

The reference transcribes the formula of :mod:`cascade_ranking.losses.dftopk` request by request on the valid
candidates only (np.sort for the order statistics, an explicit loop over stages), and, on full fixed-length
lists, the released computation (``F.binary_cross_entropy_with_logits`` per stage, ``nn.BCELoss`` on the
product, ``0.5 / w^2`` weights) of zhangzhen97/DFTOPK ``topk_loss.py`` re-expressed in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, log_expit

from cascade_ranking import losses


def _inputs(b=5, n=14, stages=2, seed=0, full=False):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(b, n, generator=g, dtype=torch.float64) * 3 for _ in range(stages)]
    label = torch.rand(b, n, generator=g, dtype=torch.float64) * 10  # distinct labels
    mask = torch.ones(b, n, dtype=torch.bool) if full else torch.rand(b, n, generator=g) > 0.25
    if not full:
        mask[1, 4:] = False  # 4 valid candidates: n <= k for k = 4
        mask[2] = False
    stage = torch.zeros(b, n, dtype=torch.long)
    return logits, label, mask, stage


def _np_loss(logits, label, mask, ks, gt, tau, w):
    """Per request: the stage BCEs and the joint BCE over the valid candidates, then the weighted sum."""
    stage_means, joint = [[] for _ in ks], []
    for b in range(label.shape[0]):
        v = mask[b]
        n = int(v.sum())
        if n == 0:
            continue
        y = np.zeros(n)
        y[np.argsort(-label[b][v])[:gt]] = 1.0
        prob = np.ones(n)
        for i, k in enumerate(ks):
            s = logits[i][b][v]
            if n > k:
                desc = np.sort(s)[::-1]
                z = (s - 0.5 * (desc[k - 1] + desc[k])) / tau
                stage_means[i].append(np.mean(-y * log_expit(z) - (1 - y) * log_expit(-z)))
                prob = prob * expit(z)
            else:
                stage_means[i].append(0.0)
        if n > min(ks):
            joint.append(np.mean(-y * np.log(prob) - (1 - y) * np.log1p(-prob)))
        else:
            joint.append(0.0)
    total = sum(np.mean(m) / (2 * w[i] ** 2) for i, m in enumerate(stage_means)) + np.mean(joint)
    return total + np.log(np.abs(w)).sum()


def _call(fn, logits, label, mask, stage, grad=False):
    xs = [x.clone().requires_grad_(grad) for x in logits]
    out = fn(xs, label=label, mask=mask, stage=stage)
    return out, xs


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("k", ["gt_num", "keep"])
@pytest.mark.parametrize("tau", [0.7, 500.0])
def test_matches_the_numpy_transcription(stages, k, tau):
    keep = [10, 7, 4][:stages]
    logits, label, mask, stage = _inputs(stages=stages)
    fn = losses.build("dftopk", keep=keep, gt_num=3, tau=tau, k=k).double()
    with torch.no_grad():
        fn.weights.copy_(torch.tensor([1.0, 0.8, 1.3][:stages]))
    out, _ = _call(fn, logits, label, mask, stage)
    ks = keep if k == "keep" else [3] * stages
    want = _np_loss([x.numpy() for x in logits], label.numpy(), mask.numpy(), ks, 3, tau, fn.weights.detach().numpy())
    np.testing.assert_allclose(out.loss.item(), want, rtol=1e-10)


def test_full_lists_equal_the_released_two_stage_computation():
    """Released: stage BCE-with-logits mean over N, then over B; joint nn.BCELoss on sigmoid products."""
    logits, label, mask, stage = _inputs(full=True, n=20)
    fn = losses.build("dftopk", keep=[15, 10], gt_num=5, tau=2.0).double()
    out, _ = _call(fn, logits, label, mask, stage)
    y = torch.zeros_like(label).scatter_(1, torch.topk(label, 5).indices, 1.0)
    z = []
    for x in logits:
        desc = torch.sort(x, descending=True).values
        z.append((x - 0.5 * (desc[:, 4:5] + desc[:, 5:6])) / 2.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    stage_terms = [bce(zi, y, reduction="none").mean(-1).mean() for zi in z]
    joint = torch.nn.BCELoss()(torch.sigmoid(z[0]) * torch.sigmoid(z[1]), y)
    want = 0.5 * stage_terms[0] + 0.5 * stage_terms[1] + joint + 0.0
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


def test_gradient_matches_central_differences_and_gradcheck():
    logits, label, mask, stage = _inputs(b=3, n=8, seed=4)
    fn = losses.build("dftopk", keep=[6, 4], gt_num=2, tau=0.9).double()
    out, xs = _call(fn, logits, label, mask, stage, grad=True)
    out.loss.backward()
    h = 1e-6
    for i in range(2):
        for b, j in [(0, 0), (0, 3), (1, 1), (2, 5)]:
            e = [torch.zeros_like(x) for x in logits]
            e[i][b, j] = h
            args = (label.numpy(), mask.numpy(), [2, 2], 2, 0.9, np.ones(2))
            plus = _np_loss([(x + d).numpy() for x, d in zip(logits, e)], *args)
            minus = _np_loss([(x - d).numpy() for x, d in zip(logits, e)], *args)
            np.testing.assert_allclose(xs[i].grad[b, j].item(), (plus - minus) / (2 * h), rtol=1e-5, atol=1e-8)
        assert (xs[i].grad[~mask] == 0).all()

    def f(a, c):
        return fn([a, c], label=label, mask=mask, stage=stage).loss

    assert torch.autograd.gradcheck(f, tuple(x.detach().clone().requires_grad_(True) for x in logits))


@pytest.mark.parametrize("operator", ["dftopk", "lapsum", "sparse_topk", "neuralsort", "softsort"])
def test_every_operator_trains_and_an_all_masked_batch_is_zero(operator):
    logits, label, mask, stage = _inputs(stages=3)
    fn = losses.build("dftopk", keep=[10, 7, 4], gt_num=3, tau=1.0, operator=operator).double()
    out, xs = _call(fn, logits, label, mask, stage, grad=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(x.grad).all() for x in xs)
    assert set(out.parts) == {"l_joint", "l_stage/0", "l_stage/1", "l_stage/2", "weight/0", "weight/1", "weight/2"}
    empty, _ = _call(fn, logits, label, torch.zeros_like(mask), stage)
    assert empty.loss.item() == 0.0


def test_saturated_logits_keep_their_gradient():
    """A confidently wrong candidate (|logit| >> 17, sigmoid rounds to 1 in float32) still gets a gradient."""
    x = torch.tensor([[60.0, 0.0, -1.0, -2.0]], requires_grad=True)  # candidate 0 is not ground truth
    label = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    mask = torch.ones_like(label, dtype=torch.bool)
    fn = losses.build("dftopk", keep=[1], gt_num=1, tau=0.5)
    fn([x], label=label, mask=mask, stage=torch.zeros_like(label, dtype=torch.long)).loss.backward()
    assert x.grad[0, 0] > 0.1


@pytest.mark.parametrize(
    "hyper, match",
    [
        ({"tau": 0.0}, "dftopk: tau must be positive"),
        ({"k": "all"}, "dftopk: k must be one of"),
        ({"operator": "bitonic"}, "unknown top-k operator 'bitonic'"),
        ({"alpha": 1.0}, "dftopk: unknown hyper-parameter"),
    ],
)
def test_bad_hyperparameters(hyper, match):
    with pytest.raises(ValueError, match=match):
        losses.build("dftopk", keep=[8, 6], **hyper)


def test_registered_with_its_released_defaults():
    assert "dftopk" in losses.available()
    assert losses.hyperparameters("dftopk") == {"tau": 500.0, "k": "gt_num", "operator": "dftopk"}

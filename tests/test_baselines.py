"""Reference values for the seven baseline losses, from independent numpy/float64 transcriptions.

Every reference below is written from the formula, on the grouped RecFlow layout of the released experiments
(candidates grouped by funnel position, best group first; labels ``30 - rank_index`` in the top group and one
constant per lower group; all valid) and with the released code's list-order/slot-slice conventions. Our
losses receive the same requests with their slots shuffled, so each test also checks that nothing depends on
slot order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, log_expit

from cascade_ranking import losses
from cascade_ranking.losses.arf import ARFv2Loss

GROUP = 10
KEEP = {2: (30, 20), 3: (40, 30, 20)}
RTOL = 1e-5


# -- layout ------------------------------------------------------------------------------------------------
def grouped_layout(num_stages: int, batch: int, seed: int):
    """RecFlow-like requests: ``num_stages + 2`` groups of 10, best group first (N = 40 or 50)."""
    rng = np.random.default_rng(seed)
    groups = num_stages + 2
    n = groups * GROUP
    stage = np.tile(np.repeat(np.arange(groups - 1, -1, -1), GROUP), (batch, 1))
    label = np.empty((batch, n))
    for b in range(batch):
        label[b, :GROUP] = 30 - rng.permutation(GROUP)  # rank_index 0..9 of the exposed items
    for g in range(1, groups):
        label[:, g * GROUP : (g + 1) * GROUP] = 30 - (21 + g)  # one constant per lower group (8, 7, 6, ...)
    logits = [rng.normal(scale=2.0, size=(batch, n)) for _ in range(num_stages)]
    return stage, label, logits


def run_ours(name, stage, label, logits, *, seed=123, mask=None, module=None, **hyper):
    """Our loss on the same requests with every request's slots shuffled."""
    batch, n = label.shape
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(n) for _ in range(batch)])

    def take(a):
        return torch.tensor(np.take_along_axis(a, perm, axis=1))

    mask = np.ones((batch, n), dtype=bool) if mask is None else mask
    fn = module if module is not None else losses.build(name, keep=KEEP[len(logits)], **hyper)
    out = fn([take(x) for x in logits], label=take(label), mask=take(mask), stage=take(stage))
    assert out.loss.dtype == torch.float64
    return out.loss.item()


# -- numpy primitives ----------------------------------------------------------------------------------
def bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def softplus(x):
    return np.logaddexp(0.0, x)


def topk_idx(x, k):
    return np.argsort(-x, kind="stable")[:k]


def np_neural_sort(s, tau):
    """NeuralSort (Grover et al. 2019, eq. 5): P[r] = softmax(((n + 1 - 2r) s - sum_k |s - s_k|) / tau)."""
    n = s.shape[-1]
    a = np.abs(s[:, :, None] - s[:, None, :]).sum(-1)
    r = np.arange(1, n + 1)
    z = ((n + 1 - 2 * r)[None, :, None] * s[:, None, :] - a[:, None, :]) / tau
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


# -- references ---------------------------------------------------------------------------------------------
def ref_bce(label, logits):
    """Pre-ranking/ranking (last stage) on the top two groups, stage i < last on the top G - i groups."""
    num_stages = len(logits)
    groups = num_stages + 2
    total = 0.0
    for i, x in enumerate(logits):
        shown = 2 if i == num_stages - 1 else groups - i
        sub = x[:, : shown * GROUP]
        target = np.zeros_like(sub)
        target[:, :GROUP] = 1.0
        total += bce(sub, target).mean()
    return total


def ref_icc_list_order(label, logits):
    """The released ICC: pairs j < l in list order, target 1[y_j > y_l], mean over N^2 slots."""
    num_stages = len(logits)
    keep = KEEP[num_stages]
    cutoffs = {2: (keep[0], keep[0]), 3: (keep[0], keep[1], keep[1])}[num_stages]
    scale = {2: (1.0, 1.0), 3: (1.0, 2.0, 4.0)}[num_stages]
    e = np.zeros_like(label)
    reach = np.ones_like(label)
    for i, x in enumerate(logits):
        kappa = -np.sort(-x, axis=1)[:, cutoffs[i] - 1 : cutoffs[i]]
        ind = expit((x - kappa) / 1e-3)
        e += scale[i] * reach * (ind if i == num_stages - 1 else 1.0 - ind) * x
        reach = reach * ind
    batch, n = label.shape
    upper = np.triu(np.ones((n, n)), k=1)
    d = e[:, :, None] - e[:, None, :]
    t = (label[:, :, None] > label[:, None, :]).astype(float)
    return (bce(d, t) * upper).sum() / (batch * n * n)


def reverse_within_groups(a):
    n = a.shape[1]
    order = np.concatenate([np.arange(g + GROUP - 1, g - 1, -1) for g in range(0, n, GROUP)])
    return a[:, order]


def ref_rankflow(label, logits):
    """Transcription of the two- and three-stage in-batch RankFlow of the LCRON experiments."""
    t = np.zeros_like(label)
    t[:, :GROUP] = 1.0  # top group
    batch = label.shape[0]
    if len(logits) == 2:
        s0, s1 = logits
        total = bce(s0, t).mean()
        sel = [topk_idx(s0[b], 30) for b in range(batch)]
        total += np.mean([bce(s1[b, i], t[b, i]) for b, i in enumerate(sel)])
        total += np.mean([(s1[b, i] - s0[b, i]) ** 2 for b, i in enumerate(sel)])  # alpha = 0: no rank term
        return total
    s0, s1, s2 = logits
    total = bce(s0, t).mean()
    bce1, mse0, rank0, bce2, mse1, rank1 = [], [], [], [], [], []
    for b in range(batch):
        i40 = topk_idx(s0[b], 40)
        bce1.append(bce(s1[b, i40], t[b, i40]))
        mse0.append((s1[b, i40] - s0[b, i40]) ** 2)
        order = np.argsort(-s1[b, i40], kind="stable")
        rank0.append(-log_expit(s0[b, i40[order[:30]]].mean() - s0[b, i40[order[30:]]].mean()))
        i30 = i40[order[:30]]
        bce2.append(bce(s2[b, i30], t[b, i30]))
        mse1.append((s2[b, i30] - s1[b, i30]) ** 2)
        order2 = np.argsort(-s2[b, i30], kind="stable")
        rank1.append(-log_expit(s1[b, i30[order2[:20]]].mean() - s1[b, i30[order2[20:]]].mean()))
    return total + sum(np.mean(v) for v in (bce1, mse0, rank0, bce2, mse1, rank1))


def ref_fs_ranknet(label, logits):
    """Each group (slots of 10) against all later groups; term / (lower count x batch x 10); summed."""
    total = 0.0
    for x in logits:
        batch, n = x.shape
        for g in range(0, n - GROUP, GROUP):
            hi, lo = x[:, g : g + GROUP], x[:, g + GROUP :]
            total += softplus(-(hi[:, :, None] - lo[:, None, :])).sum() / (lo.shape[1] * batch * GROUP)
    return total


def ref_fs_lambdaloss(label, logits, smooth_fraction=0.8, topn=30):
    def disc(r):
        return 1.0 / np.log(1.0 + r)

    total = 0.0
    for x in logits:
        batch, n = x.shape
        for b in range(batch):
            y, s = label[b], x[b]
            rank = np.empty(n)
            rank[np.argsort(-s, kind="stable")] = np.arange(1, n + 1)
            idcg = (np.sort(y)[::-1] * disc(np.arange(1, n + 1))).sum()
            gain = y / idcg
            for j in range(n):
                for k in range(n):
                    dr = abs(rank[j] - rank[k])
                    u = abs(disc(dr) - disc(dr + 1)) if dr > 0 and min(rank[j], rank[k]) <= topn else 0.0
                    dj = disc(rank[j]) if rank[j] <= topn else 0.0
                    dk = disc(rank[k]) if rank[k] <= topn else 0.0
                    w = abs(gain[j] - gain[k]) * ((1 - smooth_fraction) * u + smooth_fraction * abs(dj - dk))
                    total += w * bce(s[j] - s[k], float(y[j] > y[k])) / batch
    return total


def ref_arf(label, logits, *, v2, sigma=None, gt_num=10, tau=200.0, eps=1e-6):
    keep = KEEP[len(logits)]
    sigma = np.ones(len(logits)) if sigma is None else np.asarray(sigma, dtype=float)
    y = np_neural_sort(label, 1e-4)
    y_pos, y_neg = y[:, :gt_num].sum(1), y[:, gt_num:].sum(1)
    total = 0.0
    for i, x in enumerate(logits):
        m = keep[i]
        p = np_neural_sort(x, tau)
        if v2:
            col = p.sum(1)
            inside, outside = p[:, :m].sum(1) / (col + eps), p[:, m:].sum(1) / (col + eps)
            relax = (-y_pos * np.log(inside + eps) - y_neg * np.log(outside + eps)).mean(-1)
        else:
            relax = (-y_pos * np.log(p[:, :m].mean(1) + eps)).mean(-1)
        glob = (-y * np.log(p + eps)).mean((-2, -1))
        total += glob.mean() / (2 * sigma[i] ** 2) + relax.mean() + np.log(sigma[i])
    return total


# -- value tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_stages", [2, 3])
def test_bce_matches_reference(num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=4, seed=num_stages)
    assert run_ours("bce", stage, label, logits) == pytest.approx(ref_bce(label, logits), rel=RTOL)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_icc_equals_released_value_averaged_over_orders_of_tied_pairs(num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=4, seed=10 + num_stages)
    forward = ref_icc_list_order(label, logits)
    backward = ref_icc_list_order(reverse_within_groups(label), [reverse_within_groups(x) for x in logits])
    assert forward != pytest.approx(backward, rel=1e-3)  # the released value depends on the order of ties
    assert run_ours("icc", stage, label, logits) == pytest.approx(0.5 * (forward + backward), rel=RTOL)


def test_icc_equals_released_value_without_tied_labels():
    stage, label, logits = grouped_layout(2, batch=3, seed=7)
    label = label + np.linspace(0.0, 0.5, label.shape[1])[::-1]  # distinct labels, same group order
    assert run_ours("icc", stage, label, logits) == pytest.approx(ref_icc_list_order(label, logits), rel=RTOL)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_rankflow_matches_reference(num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=4, seed=20 + num_stages)
    assert run_ours("rankflow", stage, label, logits) == pytest.approx(ref_rankflow(label, logits), rel=RTOL)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_fs_ranknet_matches_reference(num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=4, seed=30 + num_stages)
    assert run_ours("fs_ranknet", stage, label, logits) == pytest.approx(ref_fs_ranknet(label, logits), rel=RTOL)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_fs_lambdaloss_matches_reference(num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=2, seed=40 + num_stages)
    expected = ref_fs_lambdaloss(label, logits)
    assert run_ours("fs_lambdaloss", stage, label, logits) == pytest.approx(expected, rel=RTOL)


def test_fs_lambdaloss_hyper_parameters_are_used():
    stage, label, logits = grouped_layout(2, batch=2, seed=45)
    expected = ref_fs_lambdaloss(label, logits, smooth_fraction=0.3, topn=12)
    ours = run_ours("fs_lambdaloss", stage, label, logits, smooth_fraction=0.3, topn=12)
    assert ours == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("name", ["arf", "arf_v2"])
def test_arf_matches_reference(name, num_stages):
    stage, label, logits = grouped_layout(num_stages, batch=3, seed=50 + num_stages)
    expected = ref_arf(label, logits, v2=name == "arf_v2")
    assert run_ours(name, stage, label, logits) == pytest.approx(expected, rel=RTOL)


def test_arf_learnable_weights_enter_as_uncertainty_weights():
    stage, label, logits = grouped_layout(3, batch=3, seed=57)
    fn = losses.build("arf", keep=KEEP[3])
    sigma = [0.5, 1.5, 2.0]
    with torch.no_grad():
        fn.sigma.copy_(torch.tensor(sigma))
    expected = ref_arf(label, logits, v2=False, sigma=sigma)
    assert run_ours("arf", stage, label, logits, module=fn) == pytest.approx(expected, rel=RTOL)


# -- masks: a padded candidate is a deleted candidate --------------------------------------------------------
@pytest.mark.parametrize("name", ["bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss"])
def test_padding_equals_deletion(name):
    """One request with 40 candidates and 10 extra padded slots holding junk = the same request unpadded."""
    stage, label, logits = grouped_layout(2, batch=1, seed=60)
    rng = np.random.default_rng(61)
    pad = 10
    junk_stage = rng.integers(0, 4, size=(1, pad))
    padded_stage = np.concatenate([stage, junk_stage], axis=1)
    padded_label = np.concatenate([label, rng.normal(size=(1, pad)) * 100], axis=1)
    padded_logits = [np.concatenate([x, rng.normal(size=(1, pad)) * 1e3], axis=1) for x in logits]
    mask = np.concatenate([np.ones((1, 40), bool), np.zeros((1, pad), bool)], axis=1)
    plain = run_ours(name, stage, label, logits)
    assert run_ours(name, padded_stage, padded_label, padded_logits, mask=mask) == pytest.approx(plain, rel=1e-9)


def test_bce_positives_and_visible_sets_follow_funnel_positions():
    """A hand-sized case: 2 stages, positions (3, 2, 1, 0); the last stage sees positions >= 2 only."""
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0]], dtype=torch.float64)
    stage = torch.tensor([[3, 2, 1, 0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    label = torch.tensor([[30.0, 8.0, 7.0, 6.0]], dtype=torch.float64)
    out = losses.build("bce", keep=[3, 2], gt_num=1)([x, x], label=label, mask=mask, stage=stage)
    t = np.array([1.0, 0.0, 0.0, 0.0])
    xs = x.numpy()[0]
    assert out.parts["bce/0"].item() == pytest.approx(bce(xs, t).mean(), rel=1e-12)
    assert out.parts["bce/1"].item() == pytest.approx(bce(xs[:2], t[:2]).mean(), rel=1e-12)


def test_rankflow_rank_term_weight_and_two_stage_default():
    stage, label, logits = grouped_layout(2, batch=3, seed=70)
    base = run_ours("rankflow", stage, label, logits)
    fn = losses.build("rankflow", keep=KEEP[2], rank_weight=0.5)
    with_rank = run_ours("rankflow", stage, label, logits, module=fn)
    t = np.zeros_like(label)
    t[:, :GROUP] = 1.0
    s0, s1 = logits
    rank = []
    for b in range(3):
        i30 = topk_idx(s0[b], 30)
        order = np.argsort(-s1[b, i30], kind="stable")
        rank.append(-log_expit(s0[b, i30[order[:20]]].mean() - s0[b, i30[order[20:]]].mean()))
    assert with_rank - base == pytest.approx(0.5 * np.mean(rank), rel=1e-9)


def test_icc_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="sigma"):
        losses.build("icc", keep=[30, 20], sigma=0.0)
    with pytest.raises(ValueError, match="cutoffs"):
        losses.build("icc", keep=[30, 20], cutoffs=[30])
    with pytest.raises(ValueError, match="stage_scale"):
        losses.build("icc", keep=[30, 20], stage_scale=[1.0, 2.0, 4.0])


def test_baselines_reject_bad_hyper_parameters():
    with pytest.raises(ValueError, match="visible_from"):
        losses.build("bce", keep=[30, 20], visible_from=[0, 1, 2])
    with pytest.raises(ValueError, match="smooth_fraction"):
        losses.build("fs_lambdaloss", keep=[30, 20], smooth_fraction=1.5)
    with pytest.raises(ValueError, match="tau"):
        losses.build("arf", keep=[30, 20], tau=-1.0)
    with pytest.raises(ValueError, match="keep"):
        ARFv2Loss(keep=[20, 30])


def test_stage_must_be_integer():
    stage, label, logits = grouped_layout(2, batch=1, seed=80)
    fn = losses.build("fs_ranknet", keep=KEEP[2])
    with pytest.raises(TypeError, match="stage"):
        fn(
            [torch.tensor(x) for x in logits],
            label=torch.tensor(label),
            mask=torch.ones(1, 40, dtype=torch.bool),
            stage=torch.tensor(stage, dtype=torch.float64),
        )

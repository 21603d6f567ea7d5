"""RankTower's hybrid loss: each term against a numpy float64 transcription, sample spaces, masks, ties, labels.

The shared properties (finite extremes, all-masked -> 0, order invariance, masks, float64) are also checked for
every registered method, these included, by tests/test_losses_common.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cascade_ranking import losses
from cascade_ranking.losses import ranktower as rt
from cascade_ranking.losses.ranktower import aggregate_hard_labels, sample_spaces, soft_sort_log_probs
from cascade_ranking.operators import soft_sort

NAMES = ["ranktower", "ranktower_distill", "ranktower_sort", "rankmax", "am_rankmax"]


# ----------------------------------------------------------------------------------------------------
# numpy float64 transcriptions of the paper's formulas (one request at a time, plain loops)
# ----------------------------------------------------------------------------------------------------
def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def ref_spaces(stage, mask, top=None, random_position=0):
    valid = np.flatnonzero(mask)
    t = stage[valid].max() if top is None else top
    imp = [j for j in valid if stage[j] >= t]
    rnd = [j for j in valid if stage[j] <= random_position and j not in imp]
    cand = [j for j in valid if j not in imp and j not in rnd]
    return imp, cand, rnd


def ref_distill(s, teacher, imp, kind="softmax"):
    if not imp:
        return None
    p, z = teacher[imp], s[imp]
    if kind == "softmax":
        return float(-(p * np_log_softmax(z)).sum())
    if kind == "weighted_logloss":
        sig = 1.0 / (1.0 + np.exp(-z))
        return float(np.mean(-(p * np.log(sig) + np.log(1.0 - sig))))
    pairs = [(a, b) for a in range(len(p)) for b in range(len(p)) if p[a] > p[b]]
    if not pairs:
        return None
    return float(np.mean([math.log1p(math.exp(-(z[a] - z[b]))) for a, b in pairs]))


def ref_soft_sort(x, tau):
    """SoftSort with squared distance, transcribed from eq. 15: row r = softmax_j(-(sort(x)_r - x_j)^2 / tau)."""
    srt = sorted(x.tolist(), reverse=True)
    return np.array([np.exp(np_log_softmax(np.array([-((v - xj) ** 2) / tau for xj in x]))) for v in srt])


def ref_sort(s, y, space, tau, target_tau=None):
    if not space:
        return None
    target = ref_soft_sort(y[space], tau if target_tau is None else target_tau)
    return float(-(target * np.log(ref_soft_sort(s[space], tau))).sum())


def ref_rankmax(s, y, space, imp=None, alpha=0.0, delta=1.0, beta=0.0):
    """eq. 17 (``imp is None``: every other sample, margin 1) or eq. 19 with the kept self term."""
    total, used = 0.0, False
    for j in space:
        if y[j] <= 0:
            continue
        if imp is None:
            others = [i for i in space if i != j]
            hinge = [max(0.0, s[i] - s[j] + 1.0) for i in others]
        else:
            others = [i for i in space if y[i] < y[j]]
            hinge = [max(0.0, s[i] - s[j] + alpha * (i not in imp) + delta + beta * abs(y[j] - y[i])) for i in others]
        if others:
            used = True
            total += math.log(1.0 + sum(hinge))
    return total if used else None


def batch_mean(values):
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 0.0


def ref_loss(name, s, y, stage, mask, teacher=None, **hp):
    """Reference loss of one stage's scores ``s`` [B, N] (numpy)."""
    teacher = y if teacher is None else teacher
    lambdas = hp.get("lambdas", rt.DEFAULT_LAMBDAS)
    per = {"distill": [], "sort": [], "rankmax": [], "am": []}
    for b in range(s.shape[0]):
        imp, cand, rnd = ref_spaces(stage[b], mask[b], hp.get("top_position"))
        valid = list(np.flatnonzero(mask[b]))
        per["distill"].append(ref_distill(s[b], teacher[b], imp, hp.get("distillation", "softmax")))
        per["sort"].append(
            ref_sort(s[b], y[b], sorted(imp + cand), hp.get("tau", rt.DEFAULT_SORT_TAU), hp.get("target_tau"))
        )
        per["rankmax"].append(ref_rankmax(s[b], y[b], valid))
        margin = {k: hp.get(k, d) for k, d in (("alpha", rt.DEFAULT_ALPHA), ("delta", rt.DEFAULT_DELTA), ("beta", 0.0))}
        per["am"].append(ref_rankmax(s[b], y[b], valid, imp, **margin))
    m = {k: batch_mean(v) for k, v in per.items()}
    if name == "ranktower_distill":
        return m["distill"]
    if name == "ranktower_sort":
        return m["sort"]
    if name == "rankmax":
        return m["rankmax"]
    if name == "am_rankmax":
        return m["am"]
    return lambdas[0] * m["distill"] + lambdas[1] * m["sort"] + lambdas[2] * m["am"]


def full_stage_batch(batch: int = 4, seed: int = 0, dtype=torch.float64, labels: str = "graded"):
    """Shuffled two-stage full-stage requests: 4 groups of 4 (positions 3..0), padding and tied labels.

    ``labels="graded"`` as :mod:`cascade_ranking.datasets.full_stage`: a negative at position p has label p + 1, an
    impression 3 + grade (grades 1..3, so impressions tie); ``"paper"``: the paper's hard labels (Sec. 4.2), an
    impression 1 + feedback (0..2), every other sample 0. Request 1 has padded slots, request 2 has no impression
    (only negatives), request 3 a single valid candidate.
    """
    g = torch.Generator().manual_seed(seed)
    n = 16
    stage = torch.arange(3, -1, -1).repeat_interleave(4).expand(batch, n).clone()
    grade = torch.randint(1, 4, (batch, n), generator=g)
    if labels == "paper":
        label = torch.where(stage == 3, grade, 0).to(dtype)
    else:
        label = torch.where(stage == 3, 3 + grade, stage + 1).to(dtype)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, torch.tensor([1, 5, 6, 12, 15])] = False
    mask[2, :4] = False
    mask[3, :] = False
    mask[3, 2] = True
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    stage, label, mask = stage.gather(1, perm), label.gather(1, perm), mask.gather(1, perm)
    logits = torch.randn(batch, n, generator=g, dtype=dtype) * 2
    soft = torch.rand(batch, n, generator=g, dtype=dtype) * 3
    return logits, label, mask, stage, soft


def run(fn, logits, label, mask, stage, **kw):
    logits = [x.detach().clone().requires_grad_(True) for x in logits]
    out = fn(logits, label=label, mask=mask, stage=stage, **kw)
    out.loss.backward()
    return out, [x.grad for x in logits]


# ----------------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["graded", "paper"])
@pytest.mark.parametrize("name", NAMES)
def test_each_loss_matches_the_numpy_transcription(name, labels):
    logits, label, mask, stage, _ = full_stage_batch(labels=labels)
    out, _ = run(losses.build(name, keep=[8]), [logits], label, mask, stage)
    want = ref_loss(name, logits.numpy(), label.numpy(), stage.numpy(), mask.numpy())
    assert out.loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    "hyper",
    [
        {"lambdas": (0.3, 2.0, 0.5), "tau": 0.2, "alpha": 0.7, "delta": 0.25, "beta": 0.5},
        {"lambdas": (1.0, 0.0, 0.0)},
        {"lambdas": (1.0, 1.0, 1.0), "distillation": "weighted_logloss", "target_tau": 0.05, "alpha": 5.0},
        {"lambdas": (1.0, 0.0, 1.0), "distillation": "pairwise_logloss"},
        {"top_position": 2},
    ],
)
def test_hybrid_with_hyper_parameters_and_soft_labels_matches_the_transcription(hyper):
    logits, label, mask, stage, soft = full_stage_batch(seed=1)
    fn = losses.build("ranktower", keep=[8], **hyper)
    out, _ = run(fn, [logits], label, mask, stage, soft_label=soft)
    want = ref_loss("ranktower", logits.numpy(), label.numpy(), stage.numpy(), mask.numpy(), soft.numpy(), **hyper)
    assert out.loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    computed = {k.split("/")[0] for k in out.parts}
    assert computed == {n for n, w in zip(["distill", "sort", "am_rankmax"], fn.lambdas) if w}


def test_defaults_follow_the_paper_where_it_gives_values_and_are_shared_by_the_single_term_losses():
    """Sec. 5.1.4: delta = 1, alpha in [2, 5], squared-distance SoftSort; lambdas and tau are ours."""
    assert rt.DEFAULT_DELTA == 1.0 and 2.0 <= rt.DEFAULT_ALPHA <= 5.0
    assert rt.DEFAULT_LAMBDAS == (0.1, 0.1, 1.0) and rt.DEFAULT_SORT_TAU == 1.0
    hybrid = losses.build("ranktower", keep=[8])
    assert hybrid.lambdas == rt.DEFAULT_LAMBDAS and hybrid.distillation == "softmax"
    assert losses.build("ranktower_distill", keep=[8]).distillation == hybrid.distillation
    assert losses.build("ranktower_sort", keep=[8]).tau == hybrid.tau == rt.DEFAULT_SORT_TAU
    am = losses.build("am_rankmax", keep=[8])
    assert (am.alpha, am.delta, am.beta) == (hybrid.alpha, hybrid.delta, hybrid.beta)


def test_am_rankmax_is_zero_once_every_margin_is_met_and_hinges_by_hand():
    """eq. 19 with the kept self term: log(1 + sum of the violated hinges)."""
    y = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    stage = torch.tensor([[1, 1, 0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    fn = losses.build("am_rankmax", keep=[2], alpha=2.0, delta=1.0)
    far = torch.tensor([[10.0, 5.0, 0.0]], dtype=torch.float64)
    assert fn([far], label=y, mask=mask, stage=stage).loss.item() == 0.0
    s = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    # anchor 0: items 1 (impression, margin 1) and 2 (non-impression, margin 3): 0.5 + 2.0
    # anchor 1: item 2: 0 - 0.5 + 3 = 2.5
    want = math.log(1 + 0.5 + 2.0) + math.log(1 + 2.5)
    assert fn([s], label=y, mask=mask, stage=stage).loss.item() == pytest.approx(want, rel=1e-12)
    rankmax = losses.build("rankmax", keep=[2])
    # eq. 17: anchors y > 0 against every other sample with margin 1
    want17 = math.log(1 + 0.5 + 0.0) + math.log(1 + 1.5 + 0.5)
    assert rankmax([s], label=y, mask=mask, stage=stage).loss.item() == pytest.approx(want17, rel=1e-12)


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
def test_sorting_loss_pulls_tied_labels_together_harder_at_small_tau(tau):
    """The documented reason for a large SoftSort ``tau``: tied-label samples (the candidate samples, label 0)
    are pulled onto one score, with a gradient that grows as ``tau`` shrinks."""
    s = torch.tensor([[6.0, 3.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    per, _ = rt.sorting_terms(s, y, torch.ones_like(y, dtype=torch.bool), tau=tau)
    (g,) = torch.autograd.grad(per.sum(), s)
    # gradient descent moves the highest tied sample down and the lowest up: the tied block contracts
    assert g[0, 1] > 0 and g[0, 3] < 0
    spread_rate = float(g[0, 1] - g[0, 3])  # d(s_1 - s_3)/dt under gradient flow, negated
    s_small = s.detach().clone().requires_grad_(True)
    per_small, _ = rt.sorting_terms(s_small, y, torch.ones_like(y, dtype=torch.bool), tau=tau / 10)
    (g_small,) = torch.autograd.grad(per_small.sum(), s_small)
    assert float(g_small[0, 1] - g_small[0, 3]) > spread_rate


@pytest.mark.parametrize("kind", ["softmax", "weighted_logloss", "pairwise_logloss"])
def test_distillation_uses_soft_labels_and_falls_back_to_the_hard_labels(kind):
    logits, label, mask, stage, soft = full_stage_batch(seed=2)
    fn = losses.build("ranktower_distill", keep=[8], distillation=kind)
    with_soft, grads = run(fn, [logits], label, mask, stage, soft_label=soft)
    want = ref_loss("ranktower_distill", *(x.numpy() for x in (logits, label, stage, mask, soft)), distillation=kind)
    assert with_soft.loss.item() == pytest.approx(want, rel=1e-10)
    assert (grads[0][~sample_spaces(stage, mask).impression] == 0).all()
    without, _ = run(fn, [logits], label, mask, stage)
    as_label, _ = run(fn, [logits], label, mask, stage, soft_label=label)
    assert without.loss.item() == as_label.loss.item() != with_soft.loss.item()
    # soft labels change only the distillation term
    sort = losses.build("ranktower_sort", keep=[8])
    assert (
        run(sort, [logits], label, mask, stage, soft_label=soft)[0].loss
        == run(sort, [logits], label, mask, stage)[0].loss
    )


def test_weighted_logloss_distillation_is_minimised_where_the_odds_equal_the_soft_label():
    p = torch.tensor([[0.5, 2.0, 0.1]], dtype=torch.float64)
    imp = torch.ones(1, 3, dtype=torch.bool)
    z = torch.log(p).clone().requires_grad_(True)
    per, _ = rt.weighted_logloss_terms(z, p, imp)
    (g,) = torch.autograd.grad(per.sum(), z)
    assert g.abs().max() < 1e-12


def test_negative_teacher_values_raise_unless_distillation_is_off():
    logits, label, mask, stage, soft = full_stage_batch(seed=2)
    with pytest.raises(ValueError, match=r"soft_label \(or the label, without soft_label\) must be >= 0"):
        losses.build("ranktower", keep=[8])([logits], label=label, mask=mask, stage=stage, soft_label=-soft)
    off = losses.build("ranktower", keep=[8], lambdas=(0.0, 1.0, 1.0))
    assert torch.isfinite(off([logits], label=label, mask=mask, stage=stage, soft_label=-soft).loss)


def test_stages_are_summed():
    logits, label, mask, stage, soft = full_stage_batch(seed=3)
    second = logits.flip(-1) * 0.5
    for name in NAMES:
        two = losses.build(name, keep=[12, 8])
        one = losses.build(name, keep=[8])
        out2, grads = run(two, [logits, second], label, mask, stage, soft_label=soft)
        total = sum(run(one, [x], label, mask, stage, soft_label=soft)[0].loss.item() for x in (logits, second))
        assert out2.loss.item() == pytest.approx(total, rel=1e-12)
        assert all(k.endswith(("/0", "/1")) for k in out2.parts) and len(out2.parts) % 2 == 0


def test_soft_sort_log_probs_agree_with_the_sorting_module():
    logits, _, mask, _, _ = full_stage_batch(seed=4)
    log_p = soft_sort_log_probs(logits, mask, tau=0.7)
    p = soft_sort(logits, tau=0.7, mask=mask, power=2)
    n = mask.sum(-1)
    for b in range(logits.shape[0]):
        valid = mask[b]
        rows = torch.arange(logits.shape[1]) < n[b]
        torch.testing.assert_close(log_p[b][rows][:, valid].exp(), p[b][rows][:, valid], rtol=1e-12, atol=1e-15)
        assert (log_p[b][~rows] == 0).all() and (log_p[b][:, ~valid] == 0).all()


# ----------------------------------------------------------------------------------------------------
# sample spaces
# ----------------------------------------------------------------------------------------------------
def test_sample_spaces_follow_the_funnel_positions():
    stage = torch.tensor([[3, 2, 1, 0, 3, 0], [1, 1, 0, 0, 9, 9], [2, 2, 2, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    sp = sample_spaces(stage, mask)
    assert sp.impression.tolist()[0] == [True, False, False, False, True, False]
    assert sp.candidate.tolist()[0] == [False, True, True, False, False, False]
    assert sp.random.tolist()[0] == [False, False, False, True, False, False]
    # the top position is the request's highest valid one (padded slots' junk positions are ignored)
    assert sp.impression.tolist()[1] == [True, True, False, False, False, False]
    assert not (sp.impression[2] | sp.candidate[2] | sp.random[2]).any()
    fixed = sample_spaces(stage, mask, top_position=2)
    assert fixed.impression.tolist()[0] == [True, True, False, False, True, False]
    assert not fixed.impression[1].any() and fixed.candidate[1].tolist()[:2] == [True, True]
    for space in (sp, fixed):
        total = space.impression.int() + space.candidate.int() + space.random.int()
        assert torch.equal(total.bool(), mask) and total.max() <= 1


def test_requests_without_a_term_do_not_count_in_its_mean():
    """Request 2 of the fixture has no impression: the distillation mean is over the other requests."""
    logits, label, mask, stage, _ = full_stage_batch(seed=5)
    fn = losses.build("ranktower_distill", keep=[8], top_position=3)
    full, grads = run(fn, [logits], label, mask, stage)
    assert grads[0][2].abs().sum() == 0
    rows = torch.tensor([0, 1, 3])
    sub, _ = run(fn, [logits[rows]], label[rows], mask[rows], stage[rows])
    assert full.loss.item() == pytest.approx(sub.loss.item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# masks, ties, extremes, order
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_should_handle_mask_with_soft_labels(name):
    logits, label, mask, stage, soft = full_stage_batch(seed=6)
    fn = losses.build(name, keep=[8])
    out, grads = run(fn, [logits], label, mask, stage, soft_label=soft)
    assert (grads[0][~mask] == 0).all() and torch.isfinite(grads[0]).all()
    junk = [torch.where(mask, logits, torch.full_like(logits, -3e4))]
    nan_soft = torch.where(mask, soft, torch.full_like(soft, float("nan")))
    other, _ = run(fn, junk, torch.where(mask, label, torch.full_like(label, 77.0)), mask, stage, soft_label=nan_soft)
    assert other.loss.item() == out.loss.item()
    empty, empty_grads = run(fn, [logits], label, torch.zeros_like(mask), stage, soft_label=soft)
    assert empty.loss.item() == 0.0 and (empty_grads[0] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_should_be_invariant_to_candidate_order_with_soft_labels(name):
    logits, label, mask, stage, soft = full_stage_batch(seed=7)
    fn = losses.build(name, keep=[8])
    out, grads = run(fn, [logits], label, mask, stage, soft_label=soft)
    g = torch.Generator().manual_seed(8)
    perm = torch.stack([torch.randperm(label.shape[1], generator=g) for _ in range(label.shape[0])])
    moved, moved_grads = run(
        fn,
        [logits.gather(1, perm)],
        label.gather(1, perm),
        mask.gather(1, perm),
        stage.gather(1, perm),
        soft_label=soft.gather(1, perm),
    )
    assert moved.loss.item() == pytest.approx(out.loss.item(), rel=1e-12)
    torch.testing.assert_close(moved_grads[0], grads[0].gather(1, perm), rtol=1e-10, atol=1e-14)


def test_rankmax_with_all_labels_tied_is_exactly_zero():
    """AM-Rankmax compares only lower labels (none when all tie); Rankmax's anchors are y > 0 (none at 0)."""
    logits, label, mask, stage, _ = full_stage_batch(seed=9)
    for name, tied in (("rankmax", torch.zeros_like(label)), ("am_rankmax", torch.ones_like(label))):
        out, grads = run(losses.build(name, keep=[8]), [logits], tied, mask, stage)
        assert out.loss.item() == 0.0 and (grads[0] == 0).all()


def test_tied_scores_give_the_uniform_soft_sort():
    """Equal scores: every SoftSort row is uniform, so the sorting loss is n log n per request (any labels)."""
    _, label, mask, stage, _ = full_stage_batch(seed=10)
    fn = losses.build("ranktower_sort", keep=[8])
    out, grads = run(fn, [torch.full(label.shape, 0.3, dtype=torch.float64)], label, mask, stage)
    spaces = sample_spaces(stage, mask)
    n = (spaces.impression | spaces.candidate).sum(-1).double()
    assert out.loss.item() == pytest.approx((n * torch.log(n))[n > 0].mean().item(), rel=1e-12)
    assert torch.isfinite(grads[0]).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_should_be_finite_for_extreme_logits(name, dtype):
    logits, label, mask, stage, soft = full_stage_batch(seed=11, dtype=dtype)
    fn = losses.build(name, keep=[8], **({"tau": 1e-3} if name in ("ranktower", "ranktower_sort") else {}))
    for scale in (1e4, -1e4):
        extreme = torch.where(logits > 0, scale, -scale).to(dtype)
        out, grads = run(fn, [extreme], label, mask, stage, soft_label=soft)
        assert torch.isfinite(out.loss) and torch.isfinite(grads[0]).all()
    # badly wrong scores keep a gradient (log-softmax, no eps floor): the worst impression is pushed up
    wrong = torch.where(stage == stage.amax(-1, keepdim=True), -1e4, 1e4).to(dtype)
    out, grads = run(losses.build("ranktower_sort", keep=[8]), [wrong], label, mask, stage)
    assert torch.isfinite(out.loss) and grads[0][mask].abs().max() > 0


# ----------------------------------------------------------------------------------------------------
# hard labels, hyper-parameters, errors
# ----------------------------------------------------------------------------------------------------
def test_aggregate_hard_labels_by_hand():
    click = torch.tensor([[1, 0, 1, 0]])
    like = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    impression = torch.tensor([[True, True, True, False]])
    got = aggregate_hard_labels({"click": click, "like": like}, {"click": 1.0, "like": 2.5}, 0.5, impression=impression)
    assert got.dtype == torch.float32
    assert got.tolist() == [[4.0, 0.5, 1.5, 0.0]]
    every = aggregate_hard_labels({"click": click}, {"click": 2.0}, 1.0)
    assert every.tolist() == [[3.0, 1.0, 3.0, 1.0]]
    only = aggregate_hard_labels({}, {}, 1.0, impression=impression)
    assert only.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="weights"):
        aggregate_hard_labels({"click": click}, {"like": 1.0}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        aggregate_hard_labels({"click": click, "like": like[:, :2]}, {"click": 1.0, "like": 1.0}, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        aggregate_hard_labels({}, {}, 1.0)
    with pytest.raises(ValueError, match="finite"):
        aggregate_hard_labels({"click": click}, {"click": float("nan")}, 1.0)


@pytest.mark.parametrize(
    ("name", "hyper", "match"),
    [
        ("ranktower", {"lambdas": (1.0, 1.0)}, "lambdas"),
        ("ranktower", {"lambdas": (0.0, 0.0, 0.0)}, "lambdas"),
        ("ranktower", {"lambdas": (1.0, -1.0, 1.0)}, "lambdas"),
        ("ranktower", {"tau": 0.0}, "tau"),
        ("ranktower_distill", {"distillation": "kl"}, "distillation"),
        ("ranktower", {"target_tau": -1.0}, "target_tau"),
        ("am_rankmax", {"power": 0.0}, "power"),
        ("ranktower_sort", {"tau": float("inf")}, "tau"),
        ("am_rankmax", {"alpha": -0.1}, "alpha"),
        ("am_rankmax", {"delta": float("nan")}, "delta"),
        ("rankmax", {"top_position": 0}, "top_position"),
        ("rankmax", {"top_position": 1.5}, "top_position"),
    ],
)
def test_bad_hyper_parameters_raise_naming_them(name, hyper, match):
    with pytest.raises(ValueError, match=match):
        losses.build(name, keep=[8], **hyper)


def test_bad_soft_labels_raise():
    logits, label, mask, stage, soft = full_stage_batch(seed=12)
    fn = losses.build("ranktower", keep=[8])
    with pytest.raises(ValueError, match="soft_label"):
        fn([logits], label=label, mask=mask, stage=stage, soft_label=soft[:, :-1])
    with pytest.raises(TypeError, match="soft_label"):
        fn([logits], label=label, mask=mask, stage=stage, soft_label=soft.long())
    with pytest.raises(ValueError, match="soft_label"):
        fn([logits], label=label, mask=mask, stage=stage, soft_label=torch.where(mask, np.inf, soft))

"""Tests of the LCRON loss (Wang et al., ICML 2025) against an independent numpy transcription of DESIGN §5.

The reference below is written from the formulas, one request at a time on its valid candidates only, in
float64 with scipy's softmax; it shares no code with the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from cascade_ranking import losses
from cascade_ranking.losses.lcron import LCRONLoss

EPS = 1e-6


# --------------------------------------------------------------------------------------------- reference
def _np_neuralsort(s: np.ndarray, tau: float) -> np.ndarray:
    """Grover et al. 2019, eq. 5 (descending): row i = softmax(((n + 1 - 2i) s - A_s 1) / tau), i 1-based."""
    n = len(s)
    row_sum = np.abs(s[:, None] - s[None, :]).sum(1)
    return np.stack([softmax(((n + 1 - 2 * i) * s - row_sum) / tau) for i in range(1, n + 1)])


def _np_lcron(logits, label, mask, *, g=10, q=None, tau=50.0, weights=None, threshold=None):
    """LCRON total and parts; per-request terms on valid candidates; batch mean over non-empty requests."""
    n_stages = len(logits)
    q = [g] * n_stages if q is None else list(q)
    w = np.ones(n_stages) if weights is None else np.asarray(weights, dtype=np.float64)
    e2e, singles = [], [[] for _ in range(n_stages)]
    for b in range(label.shape[0]):
        valid = np.flatnonzero(mask[b])
        n = len(valid)
        if n == 0:
            continue
        y = _np_neuralsort(label[b, valid].astype(np.float64), 1e-4)
        if threshold is not None:
            y = (y > threshold).astype(np.float64)
        y_pos, y_neg = y[:g].sum(0), y[g:].sum(0)
        top_in, stay_out = np.ones(n), np.ones(n)
        for i in range(n_stages):
            p = _np_neuralsort(logits[i][b, valid].astype(np.float64), tau)
            col = p.sum(0)
            a = p[: q[i]].sum(0) / (col + EPS)
            below = p[q[i] :].sum(0) / (col + EPS)
            top_in *= a
            stay_out *= 1.0 - below
            term = -y_pos * np.log(a + EPS) - y_neg * np.log(below + EPS)
            singles[i].append(term.mean() if n > q[i] else 0.0)
        term = -y_pos * np.log(top_in + EPS) - np.clip(1 - y_pos, 0, 1) * np.log(1 - stay_out + EPS)
        e2e.append(term.mean())
    if not e2e:
        return 0.0, {"l_e2e": 0.0, **{f"l_single/{i}": 0.0 for i in range(n_stages)}}
    parts = {"l_e2e": float(np.mean(e2e))}
    parts.update({f"l_single/{i}": float(np.mean(singles[i])) for i in range(n_stages)})
    total = parts["l_e2e"] + sum(parts[f"l_single/{i}"] / (2 * w[i] ** 2) for i in range(n_stages))
    return total + float(np.log(w).sum()), parts


# ------------------------------------------------------------------------------------------------ inputs
def _recflow_batch(b: int, stages: int, seed: int, scale: float = 10.0, shuffle: bool = True):
    """A RecFlow-like batch: groups of 10, best first; top group labelled 30 - rank_index, then constants.

    Two stages: 30 - rank_index / 7 / 6 / 5 (N = 40); three stages: 30 - rank_index / 8 / 7 / 6 / 5 (N = 50).
    Stage logits are noisy functions of the label. Returns float64 torch tensors.
    """
    rng = np.random.default_rng(seed)
    lows = [7.0, 6.0, 5.0] if stages == 2 else [8.0, 7.0, 6.0, 5.0]
    label = np.concatenate(
        [np.stack([30.0 - rng.permutation(10) for _ in range(b)])] + [np.full((b, 10), v) for v in lows],
        axis=1,
    )
    funnel = np.repeat(np.arange(len(lows), -1, -1), 10)[None].repeat(b, 0)
    n = label.shape[1]
    logits = [scale * (rng.standard_normal((b, n)) + 0.15 * label) for _ in range(stages)]
    if shuffle:
        perm = np.stack([rng.permutation(n) for _ in range(b)])
        take = lambda x: np.take_along_axis(x, perm, 1)  # noqa: E731
        label, funnel, logits = take(label), take(funnel), [take(x) for x in logits]
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    return [t(x) for x in logits], t(label), torch.ones(b, n, dtype=torch.bool), t(funnel).long()


def _keep(stages: int) -> list[int]:
    return [30, 20] if stages == 2 else [40, 30, 20]


def _call(loss_fn, logits, label, mask, stage):
    return loss_fn(logits, label=label, mask=mask, stage=stage)


def _assert_matches(out, ref_total, ref_parts, rtol=1e-5):
    assert out.loss.item() == pytest.approx(ref_total, rel=rtol, abs=1e-12)
    for k, v in ref_parts.items():
        assert out.parts[k].item() == pytest.approx(v, rel=rtol, abs=1e-12), k


# ------------------------------------------------------------------------------------- reference values
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("scale", [0.5, 10.0, 300.0])
@pytest.mark.parametrize("shuffle", [False, True], ids=["grouped", "shuffled"])
def test_lcron_matches_numpy_reference_on_recflow_layout(stages, scale, shuffle):
    logits, label, mask, stage = _recflow_batch(3, stages, seed=stages * 10 + int(scale), scale=scale, shuffle=shuffle)
    out = _call(losses.build("lcron", keep=_keep(stages), gt_num=10), logits, label, mask, stage)
    # the default label_threshold="released" binarises the label matrix for 3+ stages, as the released script
    released = 1e-3 if stages == 3 else None
    total, parts = _np_lcron([x.numpy() for x in logits], label.numpy(), mask.numpy(), threshold=released)
    _assert_matches(out, total, parts)
    assert out.loss.dtype == torch.float64


@pytest.mark.parametrize("stages", [2, 3])
def test_lcron_q_keep_uses_stage_keep_sizes(stages):
    logits, label, mask, stage = _recflow_batch(3, stages, seed=1)
    out = _call(losses.build("lcron", keep=_keep(stages), q="keep"), logits, label, mask, stage)
    released = 1e-3 if stages == 3 else None
    total, parts = _np_lcron(
        [x.numpy() for x in logits], label.numpy(), mask.numpy(), q=_keep(stages), threshold=released
    )
    _assert_matches(out, total, parts)
    default = _call(losses.build("lcron", keep=_keep(stages)), logits, label, mask, stage)
    assert abs(default.loss.item() - out.loss.item()) > 1e-3


@pytest.mark.parametrize("stages", [2, 3])
def test_lcron_binarised_label_matrix_option(stages):
    logits, label, mask, stage = _recflow_batch(3, stages, seed=2)
    out = _call(LCRONLoss(keep=_keep(stages), label_threshold=1e-3), logits, label, mask, stage)
    total, parts = _np_lcron([x.numpy() for x in logits], label.numpy(), mask.numpy(), threshold=1e-3)
    _assert_matches(out, total, parts)
    # tied groups of 10 below the ground truth: y- is 10 instead of 1, so L_single grows
    soft = _call(LCRONLoss(keep=_keep(stages), label_threshold=None), logits, label, mask, stage)
    assert out.parts["l_e2e"].item() == pytest.approx(soft.parts["l_e2e"].item(), rel=1e-12)
    assert out.parts["l_single/0"].item() > 2 * soft.parts["l_single/0"].item()


def test_lcron_matches_reference_with_partial_masks_and_weights():
    logits, label, mask, stage = _recflow_batch(5, 2, seed=3, scale=5.0)
    mask = mask.clone()
    mask[0, ::3] = False  # 26 valid
    mask[1, 7:] = False  # 7 valid: n <= g, L_single is off for this request
    mask[2, :] = False  # empty request: not counted
    mask[3, 5:37] = False  # 8 valid
    loss_fn = LCRONLoss(keep=[30, 20], tau=20.0)
    with torch.no_grad():
        loss_fn.weights.copy_(torch.tensor([0.7, 1.6]))
    out = _call(loss_fn, logits, label, mask, stage)
    total, parts = _np_lcron([x.numpy() for x in logits], label.numpy(), mask.numpy(), tau=20.0, weights=[0.7, 1.6])
    _assert_matches(out, total, parts)
    assert out.parts["weight/0"].item() == pytest.approx(0.7) and out.parts["weight/1"].item() == pytest.approx(1.6)


def test_lcron_perfect_and_inverted_cascades_by_hand():
    # hard permutation matrices (score gaps of 1e4 / tau 50): memberships are exactly 0 or 1/(1+eps).
    label = torch.arange(40, 0, -1, dtype=torch.float64).unsqueeze(0)  # distinct labels, best first
    mask = torch.ones(1, 40, dtype=torch.bool)
    stage = torch.zeros(1, 40, dtype=torch.long)
    loss_fn = LCRONLoss(keep=[30, 20])
    one = 1 / (1 + EPS)
    perfect = _call(loss_fn, [label * 1e4, label * 1e4], label, mask, stage)
    # every candidate: -log(one^2 + eps) (ground truth) or -log(1 - (eps*one)^2 + eps) (others)
    e2e = (10 * -math.log(one**2 + EPS) + 30 * -math.log(1 - (EPS * one) ** 2 + EPS)) / 40
    single = -math.log(one + EPS)
    assert perfect.parts["l_e2e"].item() == pytest.approx(e2e, rel=1e-9)
    assert perfect.parts["l_single/0"].item() == pytest.approx(single, rel=1e-9)
    assert perfect.loss.item() == pytest.approx(e2e + single, rel=1e-9)
    # inverted: ground truth at the last 10 places of both stages; the 10 worst items take the top 10 places
    inverted = _call(loss_fn, [-label * 1e4, -label * 1e4], label, mask, stage)
    big = -math.log(EPS)
    e2e = (10 * big + 10 * big + 20 * -math.log(1 - (EPS * one) ** 2 + EPS)) / 40
    single = (10 * big + 10 * big + 20 * -math.log(one + EPS)) / 40
    assert inverted.parts["l_e2e"].item() == pytest.approx(e2e, rel=1e-9)
    assert inverted.parts["l_single/1"].item() == pytest.approx(single, rel=1e-9)


# ---------------------------------------------------------------------------------------------- weights
def test_parts_and_learnable_weights_receive_gradients():
    logits, label, mask, stage = _recflow_batch(3, 3, seed=4)
    loss_fn = LCRONLoss(keep=[40, 30, 20])
    out = _call(loss_fn, logits, label, mask, stage)
    assert set(out.parts) == {
        "l_e2e",
        "l_single/0",
        "l_single/1",
        "l_single/2",
        "weight/0",
        "weight/1",
        "weight/2",
    }
    assert all(not v.requires_grad and v.dim() == 0 for v in out.parts.values())
    assert [n for n, _ in loss_fn.named_parameters()] == ["weights"]
    out.loss.backward()
    # d/dw [L/(2w^2) + log w] = -L/w^3 + 1/w = 1 - L at w = 1
    expected = torch.tensor([1 - out.parts[f"l_single/{i}"].item() for i in range(3)], dtype=torch.float32)
    torch.testing.assert_close(loss_fn.weights.grad, expected)


def test_weights_train_towards_the_uncertainty_optimum():
    logits, label, mask, stage = _recflow_batch(3, 2, seed=5)
    loss_fn = LCRONLoss(keep=[30, 20])
    opt = torch.optim.LBFGS(loss_fn.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _call(loss_fn, logits, label, mask, stage).loss
        loss.backward()
        return loss

    opt.step(closure)
    out = _call(loss_fn, logits, label, mask, stage)
    # the minimiser of L/(2w^2) + log|w| is |w| = sqrt(L)
    for i in range(2):
        assert abs(loss_fn.weights[i].item()) == pytest.approx(math.sqrt(out.parts[f"l_single/{i}"].item()), rel=1e-3)


def test_training_the_logits_reaches_full_joint_recall():
    logits, label, mask, stage = _recflow_batch(4, 2, seed=6, scale=1.0)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(x.shape, generator=g, dtype=x.dtype)) for x in logits]
    loss_fn = LCRONLoss(keep=[30, 20])
    opt = torch.optim.Adam(params + list(loss_fn.parameters()), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        _call(loss_fn, params, label, mask, stage).loss.backward()
        opt.step()
    gt = label.argsort(-1, descending=True)[:, :10]
    for b in range(4):  # run the real cascade: stage 0 keeps 30, stage 1 keeps 20 of those
        kept = params[0][b].argsort(descending=True)[:30]
        final = kept[params[1][b][kept].argsort(descending=True)[:20]]
        assert set(gt[b].tolist()) <= set(final.tolist())


# ----------------------------------------------------------------------------------- quality-bar checks
def test_masked_candidates_get_exactly_zero_gradient_and_never_enter():
    logits, label, mask, stage = _recflow_batch(3, 2, seed=7)
    mask = mask.clone()
    mask[0, :13] = False
    mask[2, 20:] = False
    junk_logits = [x.clone() for x in logits]
    junk_label = label.clone()
    for x in junk_logits:
        x[~mask] = float("nan")
    junk_logits[1][0, 0] = float("inf")
    junk_label[~mask] = float("inf")
    junk_logits = [x.requires_grad_() for x in junk_logits]
    loss_fn = LCRONLoss(keep=[30, 20])
    out = _call(loss_fn, junk_logits, junk_label, mask, stage)
    clean = _call(loss_fn, logits, label, mask, stage)
    assert out.loss.item() == pytest.approx(clean.loss.item(), rel=1e-12)
    out.loss.backward()
    for x in junk_logits:
        assert torch.isfinite(x.grad).all()
        assert torch.all(x.grad[~mask] == 0)
        assert torch.all(x.grad[mask] != 0)


def test_masking_equals_deletion_and_batch_is_mean_of_requests():
    logits, label, mask, stage = _recflow_batch(3, 2, seed=8)
    mask = mask.clone()
    mask[0, 25:] = False
    mask[1, :] = False
    loss_fn = LCRONLoss(keep=[30, 20])
    with torch.no_grad():
        loss_fn.weights.copy_(torch.tensor([1.3, 0.8]))
    batch = _call(loss_fn, logits, label, mask, stage).loss
    singles = []
    for b in (0, 2):
        keep = mask[b]
        one = [x[b, keep].unsqueeze(0) for x in logits]
        singles.append(
            _call(
                loss_fn,
                one,
                label[b, keep].unsqueeze(0),
                keep[keep].unsqueeze(0),
                stage[b, keep].unsqueeze(0),
            ).loss
        )
    torch.testing.assert_close(batch, torch.stack(singles).mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_and_ties_are_finite(dtype):
    b, n = 4, 40
    label = torch.cat([torch.full((b, 10), 3.0), torch.full((b, 30), 1.0)], 1).to(dtype)  # tied labels
    label[1] = 1.0  # one request entirely tied
    big = torch.tensor([1e4, -1e4], dtype=dtype).repeat(b, n // 2)
    cases = [big, torch.zeros(b, n, dtype=dtype), torch.full((b, n), 1e4, dtype=dtype), -big]
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[3, 30:] = False
    for logit in cases:
        params = [logit.clone().requires_grad_(), logit.flip(-1).clone().requires_grad_()]
        loss_fn = LCRONLoss(keep=[30, 20])
        out = _call(loss_fn, params, label, mask, torch.zeros(b, n, dtype=torch.long))
        assert out.loss.dtype == dtype and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in params)
        assert torch.isfinite(loss_fn.weights.grad).all()


def test_invariant_to_candidate_order():
    logits, label, mask, stage = _recflow_batch(3, 3, seed=9)
    mask = mask.clone()
    mask[1, 40:] = False
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    loss_fn = LCRONLoss(keep=[40, 30, 20])
    a = [x.clone().requires_grad_() for x in logits]
    b = [x[:, perm].clone().requires_grad_() for x in logits]
    out_a = _call(loss_fn, a, label, mask, stage)
    out_b = _call(loss_fn, b, label[:, perm], mask[:, perm], stage[:, perm])
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-12, atol=1e-12)
    out_a.loss.backward()
    out_b.loss.backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad[:, perm], y.grad, rtol=1e-9, atol=1e-12)


def test_all_masked_batch_gives_exactly_zero_with_zero_gradients():
    logits, label, _, stage = _recflow_batch(2, 2, seed=10)
    params = [x.clone().requires_grad_() for x in logits]
    loss_fn = LCRONLoss(keep=[30, 20])
    with torch.no_grad():
        loss_fn.weights.copy_(torch.tensor([0.5, 2.0]))  # the log-weight term must vanish too
    out = _call(loss_fn, params, label, torch.zeros(2, 40, dtype=torch.bool), stage)
    assert out.loss.item() == 0.0
    assert all(v.item() == 0.0 for k, v in out.parts.items() if not k.startswith("weight/"))
    out.loss.backward()
    assert all(torch.all(p.grad == 0) for p in params)
    assert torch.all(loss_fn.weights.grad == 0)


def test_float32_inputs_give_float32_loss():
    logits, label, mask, stage = _recflow_batch(2, 2, seed=11)
    out = _call(LCRONLoss(keep=[30, 20]), [x.float() for x in logits], label.float(), mask, stage)
    ref = _call(LCRONLoss(keep=[30, 20]), logits, label, mask, stage)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_like_on_cpu():
    logits, label, mask, stage = _recflow_batch(2, 3, seed=12)
    cpu = _call(LCRONLoss(keep=[40, 30, 20]), logits, label, mask, stage)
    dev = torch.device("cuda")
    gpu = _call(
        LCRONLoss(keep=[40, 30, 20]).to(dev),
        [x.to(dev) for x in logits],
        label.to(dev),
        mask.to(dev),
        stage.to(dev),
    )
    assert gpu.loss.device.type == "cuda"
    assert gpu.loss.item() == pytest.approx(cpu.loss.item(), rel=1e-9)


# ------------------------------------------------------------------------------------------------ errors
def test_wrong_number_of_stages_raises():
    logits, label, mask, stage = _recflow_batch(2, 3, seed=13)
    with pytest.raises(ValueError, match="3 stages.*built for 2"):
        _call(LCRONLoss(keep=[30, 20]), logits, label, mask, stage)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda lg, lb, m, s: (lg[0], lb, m, s), TypeError, "list"),
        (lambda lg, lb, m, s: ([lg[0], lg[1][:, :30]], lb, m, s), ValueError, r"logits\[1\]"),
        (lambda lg, lb, m, s: (lg, lb[:, :30], m, s), ValueError, "logits"),
        (lambda lg, lb, m, s: (lg, lb, m.float(), s), ValueError, "mask"),
        (lambda lg, lb, m, s: (lg, lb, m, s[:1]), ValueError, "stage"),
        (lambda lg, lb, m, s: (lg, lb.long(), m, s), TypeError, "label"),
        (lambda lg, lb, m, s: ([x.long() for x in lg], lb, m, s), TypeError, "floating"),
        (lambda lg, lb, m, s: (lg, torch.full_like(lb, float("nan")), m, s), ValueError, "NaN"),
    ],
)
def test_bad_inputs_raise(mutate, error, match):
    logits, label, mask, stage = _recflow_batch(2, 2, seed=14)
    with pytest.raises(error, match=match):
        _call(LCRONLoss(keep=[30, 20]), *mutate(logits, label, mask, stage))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"keep": []}, "keep"),
        ({"keep": [30, 0]}, "keep"),
        ({"keep": [30, 20], "gt_num": 0}, "gt_num"),
        ({"keep": [30, 20], "tau": 0.0}, "tau"),
        ({"keep": [30, 20], "q": "paper"}, "q must be"),
        ({"keep": [30, 20], "label_threshold": 1.5}, "label_threshold"),
    ],
)
def test_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LCRONLoss(**kwargs)


def test_registry_builds_lcron_with_defaults():
    loss_fn = losses.build("lcron", keep=[40, 30, 20])
    assert isinstance(loss_fn, LCRONLoss) and isinstance(loss_fn, losses.CascadeLoss)
    assert (loss_fn.keep, loss_fn.gt_num, loss_fn.tau, loss_fn.q) == ((40, 30, 20), 10, 50.0, "gt_num")
    assert loss_fn.q_per_stage == (10, 10, 10)
    torch.testing.assert_close(loss_fn.weights.detach(), torch.ones(3))

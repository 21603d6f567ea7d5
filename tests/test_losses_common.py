"""Properties every registered cascade loss must have (DESIGN.md section 7), for two and three stages.

Parameterised over ``losses.available()``, so a method joins as soon as its module lands.
"""

from __future__ import annotations

import pytest
import torch

from cascade_ranking import losses

METHODS = losses.available()
KEEP = {2: (30, 20), 3: (40, 30, 20)}
GROUP = 10


def recflow_batch(num_stages: int, batch: int = 3, *, seed: int = 0, dtype=torch.float32):
    """Shuffled RecFlow-like requests: ``num_stages + 2`` funnel groups of 10, all valid."""
    g = torch.Generator().manual_seed(seed)
    groups = num_stages + 2
    n = groups * GROUP
    stage = torch.arange(groups - 1, -1, -1).repeat_interleave(GROUP).expand(batch, n).clone()
    label = (8.0 - (groups - 1 - stage)).to(dtype)
    top = torch.stack([30.0 - torch.randperm(GROUP, generator=g) for _ in range(batch)]).to(dtype)
    label[:, :GROUP] = top
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    stage, label = stage.gather(1, perm), label.gather(1, perm)
    logits = [torch.randn(batch, n, generator=g, dtype=dtype) * 2 for _ in range(num_stages)]
    mask = torch.ones(batch, n, dtype=torch.bool)
    return logits, label, mask, stage


def call(fn, logits, label, mask, stage):
    logits = [x.detach().clone().requires_grad_(True) for x in logits]
    out = fn(logits, label=label, mask=mask, stage=stage)
    out.loss.backward()
    return out, [x.grad for x in logits]


def all_finite(tensors) -> bool:
    return all(t is not None and bool(torch.isfinite(t).all()) for t in tensors)


params = pytest.mark.parametrize("num_stages", [2, 3])
methods = pytest.mark.parametrize("name", METHODS)
#: methods whose loss module owns learnable loss weights (ARF's sigma, LCRON's w)
WEIGHTED = [name for name in METHODS if list(losses.build(name, keep=KEEP[2]).parameters())]


def test_all_baselines_are_registered_and_importable():
    for name in ["bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2"]:
        assert name in METHODS


@methods
@params
def test_output_is_a_scalar_with_detached_parts(name, num_stages):
    fn = losses.build(name, keep=KEEP[num_stages])
    assert isinstance(fn, torch.nn.Module)
    out, grads = call(fn, *recflow_batch(num_stages))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.parts and all(v.dim() == 0 and not v.requires_grad for v in out.parts.values())
    # every stage model is trained by the loss
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)


@methods
@params
def test_should_be_finite_for_extreme_logits(name, num_stages):
    logits, label, mask, stage = recflow_batch(num_stages, seed=1)
    signs = [torch.where(x > 0, 1.0, -1.0) for x in logits]
    fn = losses.build(name, keep=KEEP[num_stages])
    out, grads = call(fn, [1e4 * s for s in signs], label, mask, stage)
    assert torch.isfinite(out.loss)
    assert all_finite(grads) and all_finite([p.grad for p in fn.parameters()])


@methods
@params
@pytest.mark.parametrize("ties", ["equal_logits", "equal_labels", "both"])
def test_should_handle_ties(name, num_stages, ties):
    logits, label, mask, stage = recflow_batch(num_stages, seed=2)
    if ties in ("equal_logits", "both"):
        logits = [torch.full_like(x, 0.7) for x in logits]
    if ties in ("equal_labels", "both"):
        label = torch.ones_like(label)
    fn = losses.build(name, keep=KEEP[num_stages])
    out, grads = call(fn, logits, label, mask, stage)
    assert torch.isfinite(out.loss) and all_finite(grads)
    # ties never make the value depend on slot order
    perm = torch.randperm(label.shape[1], generator=torch.Generator().manual_seed(3))
    permuted = fn([x[:, perm] for x in logits], label=label[:, perm], mask=mask[:, perm], stage=stage[:, perm])
    torch.testing.assert_close(permuted.loss, out.loss.detach(), rtol=1e-5, atol=1e-6)


@methods
@params
def test_all_masked_batch_gives_exactly_zero(name, num_stages):
    logits, label, mask, stage = recflow_batch(num_stages, seed=4)
    fn = losses.build(name, keep=KEEP[num_stages])
    out, grads = call(fn, logits, label, torch.zeros_like(mask), stage)
    assert out.loss.item() == 0.0
    assert all(bool((gr == 0).all()) for gr in grads)
    assert all_finite([p.grad for p in fn.parameters()])


@methods
@params
def test_all_masked_requests_do_not_change_the_batch_loss(name, num_stages):
    logits, label, mask, stage = recflow_batch(num_stages, batch=4, seed=5)
    fn = losses.build(name, keep=KEEP[num_stages])
    mask = mask.clone()
    mask[1] = False
    full, grads = call(fn, logits, label, mask, stage)
    keep_rows = torch.tensor([0, 2, 3])
    sub, _ = call(fn, [x[keep_rows] for x in logits], label[keep_rows], mask[keep_rows], stage[keep_rows])
    torch.testing.assert_close(full.loss, sub.loss, rtol=1e-5, atol=1e-6)
    assert all_finite(grads) and all(bool((gr[1] == 0).all()) for gr in grads)


@methods
@params
def test_should_handle_mask(name, num_stages):
    """Padded candidates: exactly zero gradient, and their logits, labels and positions change nothing."""
    logits, label, mask, stage = recflow_batch(num_stages, batch=4, seed=6, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(mask.shape, generator=g) > 0.3
    mask[0] = True  # one complete request
    fn = losses.build(name, keep=KEEP[num_stages])
    out, grads = call(fn, logits, label, mask, stage)
    assert torch.isfinite(out.loss) and all_finite(grads)
    assert all(bool((gr[~mask] == 0).all()) for gr in grads)

    junk = [torch.where(mask, x, torch.full_like(x, 1e4)) for x in logits]
    junk_label = torch.where(mask, label, torch.full_like(label, 1e3))
    junk_stage = torch.where(mask, stage, torch.full_like(stage, 9))
    other, _ = call(fn, junk, junk_label, mask, junk_stage)
    torch.testing.assert_close(other.loss, out.loss, rtol=1e-10, atol=1e-12)


@methods
@params
def test_should_be_invariant_to_candidate_order(name, num_stages):
    logits, label, mask, stage = recflow_batch(num_stages, batch=3, seed=8, dtype=torch.float64)
    mask = mask.clone()
    mask[2, :7] = False
    fn = losses.build(name, keep=KEEP[num_stages])
    out, grads = call(fn, logits, label, mask, stage)
    g = torch.Generator().manual_seed(9)
    perm = torch.stack([torch.randperm(label.shape[1], generator=g) for _ in range(label.shape[0])])
    moved, moved_grads = call(
        fn,
        [x.gather(1, perm) for x in logits],
        label.gather(1, perm),
        mask.gather(1, perm),
        stage.gather(1, perm),
    )
    torch.testing.assert_close(moved.loss, out.loss, rtol=1e-10, atol=1e-12)
    for gr, mg in zip(grads, moved_grads, strict=True):
        torch.testing.assert_close(mg, gr.gather(1, perm), rtol=1e-8, atol=1e-12)


def test_methods_with_learnable_weights_are_found():
    assert {"arf", "arf_v2"} <= set(WEIGHTED)


@pytest.mark.parametrize("name", WEIGHTED)
@params
def test_learnable_loss_weights_receive_finite_gradients(name, num_stages):
    fn = losses.build(name, keep=KEEP[num_stages])
    parameters = list(fn.parameters())
    call(fn, *recflow_batch(num_stages, seed=10))
    assert all_finite([p.grad for p in parameters])
    assert any(bool((p.grad != 0).any()) for p in parameters)


@methods
@params
def test_should_work_in_float64(name, num_stages):
    logits, label, mask, stage = recflow_batch(num_stages, seed=11, dtype=torch.float64)
    fn = losses.build(name, keep=KEEP[num_stages])
    out64, grads = call(fn, logits, label, mask, stage)
    assert out64.loss.dtype == torch.float64 and all(gr.dtype == torch.float64 for gr in grads)
    out32, _ = call(fn, [x.float() for x in logits], label.float(), mask, stage)
    assert out32.loss.dtype == torch.float32
    torch.testing.assert_close(out32.loss.double(), out64.loss.detach(), rtol=1e-4, atol=1e-5)


@methods
def test_wrong_number_of_stages_raises(name):
    logits, label, mask, stage = recflow_batch(3, seed=12)
    fn = losses.build(name, keep=KEEP[2])
    with pytest.raises(ValueError, match="stages"):
        fn(logits, label=label, mask=mask, stage=stage)
    with pytest.raises(ValueError, match="keep"):
        losses.build(name, keep=[20, 30])


@methods
def test_wrong_shapes_and_types_raise(name):
    logits, label, mask, stage = recflow_batch(2, seed=13)
    fn = losses.build(name, keep=KEEP[2])
    with pytest.raises(ValueError, match="mask"):
        fn(logits, label=label, mask=mask.float(), stage=stage)
    with pytest.raises(ValueError, match="logits"):
        fn([logits[0], logits[1][:, :-1]], label=label, mask=mask, stage=stage)
    with pytest.raises(TypeError, match="logits"):
        fn(torch.stack(logits), label=label, mask=mask, stage=stage)


def test_unknown_method_raises_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'lcron2'.*bce"):
        losses.build("lcron2", keep=[30, 20])

"""LCRON, ARF and ARF-v2 over any relaxed top-k operator (``--set loss.operator=...``).

The defaults (NeuralSort) must give bitwise the losses and gradients of the code before the operator
interface: ``tests/data/set_losses_before_operators.json`` holds them, recorded at revision 35b9410.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import pytest
import torch

from cascade_ranking import losses, operators

BEFORE = Path(__file__).parent / "data" / "set_losses_before_operators.json"


def _inputs(stages: int, dtype: torch.dtype, seed: int = 9, b: int = 6, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(b, n, generator=g, dtype=torch.float64) * 2).to(dtype) for _ in range(stages)]
    label = torch.randint(0, 5, (b, n), generator=g).to(dtype)
    mask = torch.rand(b, n, generator=g) > 0.2
    mask[0] = True
    mask[1] = False
    stage = torch.randint(0, stages + 2, (b, n), generator=g)
    return logits, label, mask, stage


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(autouse=True)
def _one_thread():
    """The recorded digests were computed with one intra-op thread (float32 reductions depend on the split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(method: str, stages: int, dtype: torch.dtype, **hyper):
    logits, label, mask, stage = _inputs(stages, dtype)
    fn = losses.build(method, keep=[8, 6, 4][:stages], gt_num=3, **hyper).to(dtype)
    xs = [x.clone().requires_grad_(True) for x in logits]
    out = fn(xs, label=label, mask=mask, stage=stage)
    out.loss.backward()
    return out, xs, fn


@pytest.mark.parametrize("method", ["lcron", "arf", "arf_v2"])
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_operator_gives_bitwise_the_losses_of_before(method, stages, dtype):
    ref = json.loads(BEFORE.read_text())
    machine = ref["_recorded_on"]
    here = {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if any(machine[k] != v for k, v in here.items()) or machine["torch"] != torch.__version__:
        pytest.skip(f"bitwise reference recorded on {machine}, this is {here} torch {torch.__version__}")
    out, xs, fn = _run(method, stages, dtype)
    want = ref[f"{method}/{stages}/{str(dtype).split('.')[-1]}"]
    assert float(out.loss.detach()).hex() == want["loss"]
    assert [_digest(x.grad) for x in xs] == want["grads"]
    assert [_digest(p.grad) for p in fn.parameters()] == want["param_grads"]


def test_explicit_neuralsort_equals_the_default():
    a, xa, _ = _run("lcron", 2, torch.float64)
    b, xb, _ = _run("lcron", 2, torch.float64, operator="neuralsort")
    assert a.loss.item() == b.loss.item() and all(torch.equal(x.grad, y.grad) for x, y in zip(xa, xb))


@pytest.mark.parametrize("name", operators.available())
@pytest.mark.parametrize("stages", [2, 3])
def test_lcron_over_every_operator_is_finite_and_masks_delete(name, stages):
    out, xs, fn = _run("lcron", stages, torch.float64, operator=name, tau=0.5)
    assert torch.isfinite(out.loss) and all(torch.isfinite(x.grad).all() for x in xs)
    _, _, mask, _ = _inputs(stages, torch.float64)
    assert all((x.grad[~mask] == 0).all() for x in xs)
    assert fn.operator == name and f"operator={name!r}" in repr(fn)


@pytest.mark.parametrize("name", ["softsort", "dftopk", "lapsum", "sparse_topk"])
def test_lcron_hard_limits_agree_across_operators(name):
    """As tau -> 0 every operator's membership is the hard top-q indicator, so L_single agrees (no ties)."""
    logits, label, mask, stage = _inputs(2, torch.float64)
    label = label + torch.rand(label.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    build = lambda op, tau: losses.build("lcron", keep=[8, 6], gt_num=3, operator=op, tau=tau).double()  # noqa: E731
    ref = build("neuralsort", 1e-4)(logits, label=label, mask=mask, stage=stage)
    got = build(name, 1e-4)(logits, label=label, mask=mask, stage=stage)
    for part in ("l_e2e", "l_single/0", "l_single/1"):
        torch.testing.assert_close(got.parts[part], ref.parts[part], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["arf", "arf_v2"])
def test_arf_over_softsort_and_rejects_operators_without_a_matrix(method):
    out, xs, _ = _run(method, 2, torch.float64, operator="softsort", tau=0.5)
    assert torch.isfinite(out.loss) and all(torch.isfinite(x.grad).all() for x in xs)
    with pytest.raises(ValueError, match=f"{method}: operator 'dftopk' has no permutation matrix"):
        losses.build(method, keep=[8, 6], operator="dftopk")


@pytest.mark.parametrize("method", ["lcron", "arf", "arf_v2"])
def test_unknown_operator_is_a_clear_error_and_recorded_hyperparameters_name_it(method):
    with pytest.raises(ValueError, match="unknown top-k operator 'bitonic'; known operators: neuralsort, softsort"):
        losses.build(method, keep=[8, 6], operator="bitonic")
    assert losses.hyperparameters(method)["operator"] == "neuralsort"
    assert losses.hyperparameters(method, operator="softsort")["operator"] == "softsort"

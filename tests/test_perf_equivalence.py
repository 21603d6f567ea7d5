"""Speed changes that must not change the function: each against the plain formulation, float64 and float32."""

from __future__ import annotations

import pytest
import torch

from cascade_ranking import losses
from cascade_ranking.cascade import Cascade, Stage
from cascade_ranking.models import build_model
from cascade_ranking.training.optim import adam, fused_supported
from conftest import random_batch
from test_models import make_schema


def _cascade_and_loss(dtype: torch.dtype):
    schema = make_schema(length=6, num_candidates=7)
    torch.manual_seed(0)
    cascade = Cascade(
        [
            Stage("retrieval", build_model("dssm", schema, emb_dim=4, hidden=16), 5),
            Stage("prerank", build_model("din", schema, emb_dim=4, hidden=16), 3),
        ]
    ).to(dtype)
    loss_fn = losses.build("lcron", keep=[5, 3], gt_num=2).to(dtype)
    return schema, cascade, loss_fn


def _train_steps(fused: bool, dtype: torch.dtype, steps: int = 4) -> list[torch.Tensor]:
    schema, cascade, loss_fn = _cascade_and_loss(dtype)
    params = list(cascade.parameters()) + list(loss_fn.parameters())
    opt = adam(params, 0.01, fused=fused)
    for s in range(steps):
        batch = random_batch(schema, 6, seed=s)
        out = loss_fn(cascade(batch), label=batch.label.to(dtype), mask=batch.mask, stage=batch.stage)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_fused_adam_trains_like_the_default_adam(dtype, tol):
    """Four LCRON steps of a DSSM + DIN cascade: the fused kernel and the multi-tensor Adam end at the same
    weights (embedding tables, MLPs and the loss's learnable weights) up to rounding."""
    fused, plain = _train_steps(True, dtype), _train_steps(False, dtype)
    moved = 0
    for a, b in zip(fused, plain):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
        moved += int(a.numel())
    assert moved > 1000


def test_adam_is_fused_where_torch_has_the_kernel():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_supported(p) and adam(p, 0.01).defaults["fused"]
    assert not adam(p, 0.01, fused=False).defaults["fused"]
    assert not fused_supported([]) and not fused_supported([torch.zeros(2, dtype=torch.long)])
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not fused_supported(meta) and not adam(meta, 0.01).defaults["fused"]
    with pytest.raises(ValueError, match="fused Adam"):
        adam(meta, 0.01, fused=True)

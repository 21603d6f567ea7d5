"""DAT and IntTower: serving split = full forward, padding, auxiliary losses against numpy, the training hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cascade_ranking.cascade import Cascade, Stage
from cascade_ranking.models import DAT, IntTower, build_model
from cascade_ranking.models.auxiliary import add_auxiliary_losses, positives
from cascade_ranking.models.dat import amm_loss, category_alignment_loss
from cascade_ranking.models.inttower import LightSE, contrastive_interaction_loss, fe_score
from test_ranktower_model import make_batch, make_schema

OPTIONS = {
    "dat": {"emb_dim": 4, "hidden": 16, "category_field": "genre"},
    "inttower": {"emb_dim": 4, "hidden": 12, "layers": 2, "heads_user": 3, "heads_item": 2, "head_dim": 5},
}


def make(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(name, make_schema(), **{**OPTIONS[name], **kw}).double()


def labelled_batch(seed: int = 0):
    """make_batch with two funnel positions: the first two valid slots of every request are impressions."""
    batch = make_batch(make_schema(), seed=seed)
    stage = torch.zeros_like(batch.stage)
    stage[:, :2] = 1
    batch.stage = torch.where(batch.mask, stage, torch.zeros_like(stage))
    return batch


def cached_scores(model, batch):
    if isinstance(model, DAT):
        return model.score_from_cache(model.user_embedding(batch), model.encode_items(batch.item))
    return model.score_from_cache(model.user_heads(batch), model.item_heads(batch.item))


@pytest.mark.parametrize("name", ["dat", "inttower"])
def test_registry_and_serving_split_equal_the_full_forward(name):
    model = make(name).eval()
    assert isinstance(model, DAT if name == "dat" else IntTower)
    batch = labelled_batch()
    with torch.no_grad():
        full = model(batch)
        torch.testing.assert_close(cached_scores(model, batch), full, rtol=1e-12, atol=1e-12)
        # a shared corpus [M] scored for every request equals the per-request candidate layout
        corpus = {f: torch.arange(1, 7) for f in ("item_id", "genre")}
        encode = model.encode_items if name == "dat" else model.item_heads
        user = model.user_embedding(batch) if name == "dat" else model.user_heads(batch)
        shared = model.score_from_cache(user, encode(corpus))
        per_request = {f: v.expand(batch.batch_size, 6) for f, v in corpus.items()}
        torch.testing.assert_close(shared, model.score_from_cache(user, encode(per_request)), rtol=1e-12, atol=1e-12)
    assert full.shape == batch.mask.shape and torch.isfinite(full).all()
    assert model.pop_auxiliary_losses() == {}  # nothing kept in evaluation


@pytest.mark.parametrize("name", ["dat", "inttower"])
def test_padded_slots_change_neither_valid_scores_nor_auxiliary_losses(name):
    model = make(name, seed=1).train()
    batch = labelled_batch(seed=1)
    scores = model(batch)
    aux = model.pop_auxiliary_losses()
    assert aux and all(torch.isfinite(v) for v in aux.values())
    junk = labelled_batch(seed=1)
    junk.item = {f: torch.where(batch.mask, v, torch.full_like(v, 3)) for f, v in batch.item.items()}
    junk.label = torch.where(batch.mask, batch.label, torch.full_like(batch.label, 9.0))
    junk.stage = torch.where(batch.mask, batch.stage, torch.full_like(batch.stage, 5))
    other = model(junk)
    torch.testing.assert_close(other[batch.mask], scores[batch.mask], rtol=1e-12, atol=1e-12)
    for key, value in model.pop_auxiliary_losses().items():
        torch.testing.assert_close(value, aux[key], rtol=1e-12, atol=1e-12)


def test_amm_loss_against_numpy_and_stop_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(3, 5, generator=g) > 0.5
    valid = torch.rand(3, 5, generator=g) > 0.2
    got = amm_loss(a, p, pos, valid)
    an, pn = a.detach().numpy(), p.detach().numpy()
    total = sum(
        float(((an[b, 0] - pn[b, n]) ** 2).sum()) for b in range(3) for n in range(5) if pos[b, n] and valid[b, n]
    )
    assert got.item() == pytest.approx(total / int(valid.sum()), rel=1e-12)
    got.backward()
    assert p.grad is None or (p.grad == 0).all()  # the tower outputs are constants of the mimic loss
    assert a.grad.abs().sum() > 0


def test_category_alignment_loss_against_numpy_covariances():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    cat = torch.tensor([[1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 4, 1]])
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 5] = False
    rows, cats = x[valid].numpy(), cat[valid].numpy()
    covs = {c: np.cov(rows[cats == c], rowvar=False, ddof=1) for c in np.unique(cats) if (cats == c).sum() >= 2}
    major = 1  # five valid candidates
    want = sum(float(((covs[major] - covs[c]) ** 2).sum()) for c in covs if c != major)
    assert category_alignment_loss(x, cat, valid).item() == pytest.approx(want, rel=1e-12)
    one = torch.ones_like(cat)
    assert category_alignment_loss(x, one, valid).item() == 0.0


def test_fe_score_and_light_se_against_loops():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64)  # [B, L, H_u, k]
    v = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)  # [B, N, H_i, k]
    want = np.zeros((2, 5))
    for b in range(2):
        for n in range(5):
            want[b, n] = sum(
                max(float(u[b, l, h] @ v[b, n, h2]) for h2 in range(3)) for l in range(3) for h in range(2)
            )
    np.testing.assert_allclose(fe_score(u, v).numpy(), want, rtol=1e-12)
    se = LightSE(3).double()
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    z = x.mean(-1).numpy() @ se.excitation.weight.detach().numpy().T + se.excitation.bias.detach().numpy()
    a = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(se(x).detach().numpy(), x.numpy() * (1 + a[..., None]), rtol=1e-12)


def test_contrastive_interaction_loss_against_numpy_infonce():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(3, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    valid = torch.rand(3, 5, generator=g) > 0.3
    pos = valid & (torch.rand(3, 5, generator=g) > 0.5)
    got = contrastive_interaction_loss(u, v, pos, valid, tau=0.2).item()
    un = u.numpy() / np.linalg.norm(u.numpy(), axis=-1, keepdims=True)
    vn = v.numpy() / np.linalg.norm(v.numpy(), axis=-1, keepdims=True)
    terms = []
    for b in range(3):
        denom = sum(math.exp(float(un[b] @ vn[b2, n2]) / 0.2) for b2 in range(3) for n2 in range(5) if valid[b2, n2])
        for n in range(5):
            if pos[b, n]:
                terms.append(-(float(un[b] @ vn[b, n]) / 0.2 - math.log(denom)))
    assert got == pytest.approx(float(np.mean(terms)), rel=1e-10)
    assert contrastive_interaction_loss(u, v, torch.zeros_like(pos), valid, tau=0.2).item() == 0.0


@pytest.mark.parametrize("name", ["dat", "inttower"])
def test_training_hook_adds_the_auxiliary_losses_and_their_gradients(name):
    model = make(name, seed=4).train()
    cascade = Cascade([Stage("prerank", model, 3)])
    batch = labelled_batch(seed=4)
    (logits,) = cascade(batch)
    base = logits[batch.mask].square().mean()
    total, parts = add_auxiliary_losses(base, {"main": base.detach()}, cascade)
    aux_keys = [k for k in parts if k.startswith("aux/")]
    want = {"dat": {"amm_user", "amm_item", "cal"}, "inttower": {"cir"}}[name]
    assert {k.rsplit("/", 1)[-1] for k in aux_keys} == want
    assert total.item() == pytest.approx(base.item() + sum(parts[k].item() for k in aux_keys), rel=1e-12)
    total.backward()
    if name == "dat":
        assert model.user_aug.weight.grad.abs().sum() > 0
    # popped: a second call adds nothing
    again, parts2 = add_auxiliary_losses(base.detach(), {}, cascade)
    assert parts2 == {} and again.item() == base.item()


def test_positives_default_to_the_top_funnel_position():
    batch = labelled_batch(seed=5)
    top = positives(batch, None)
    assert torch.equal(top, batch.mask & (batch.stage == 1))
    assert torch.equal(positives(batch, 0.5), batch.mask & (batch.label >= 0.5))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="not a item field"):
        make("dat", category_field="hour")
    with pytest.raises(ValueError, match="heads_user"):
        make("inttower", heads_user=0)


@pytest.mark.parametrize("models", [["dssm", "dat"], ["dssm", "inttower"]])
def test_train_runs_with_the_new_models_and_records_their_auxiliary_losses(tmp_path, tiny_dataset, models):
    from cascade_ranking.training.config import TrainConfig
    from cascade_ranking.training.loop import train

    config = TrainConfig(data=tiny_dataset, device="cpu", method="bce", models=models)
    result = train(config, data=tiny_dataset, run_dir=tmp_path / "run")
    parts = result.metrics["final_loss_parts"]
    assert any(k.startswith("aux/stage") or k.startswith("aux/") for k in parts)
    assert 0.0 <= result.metrics["test"]["joint_recall"] <= 1.0

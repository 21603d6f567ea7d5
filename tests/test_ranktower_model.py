"""RankTower model: shapes, the cached serving path, max-similarity, the detached gate, padding, the GAU formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.models import build_model
from cascade_ranking.models.ranktower import GatedCrossAttention, MultiHeadGatedNetwork, RankTower, max_similarity
from cascade_ranking.types import RequestBatch
from conftest import random_batch

HU, HI, K = 3, 2, 5


def make_schema(history: bool = True, num_candidates: int = 6) -> DatasetSchema:
    features = [
        {"name": "user_id", "role": "user", "vocab_size": 30},
        {"name": "hour", "role": "context", "vocab_size": 25},
        {"name": "item_id", "role": "item", "vocab_size": 50},
        {"name": "genre", "role": "item", "vocab_size": 9},
    ]
    hist = [{"name": "hist_item", "item_field": "item_id"}, {"name": "hist_genre", "item_field": "genre"}]
    return DatasetSchema(
        name="toy",
        features=features,
        history=hist if history else [],
        history_length=4 if history else 0,
        num_candidates=num_candidates,
        funnel_positions=["neg", "pos"],
        keep=[4, 2],
        gt_num=2,
        partitions=[],
    )


def make_batch(schema: DatasetSchema, batch_size: int = 4, seed: int = 0) -> RequestBatch:
    return random_batch(schema, batch_size, seed, min_valid=2)


def make_model(schema: DatasetSchema, seed: int = 0, **kw) -> RankTower:
    torch.manual_seed(seed)
    options = {"emb_dim": 4, "hidden": 8, "heads_user": HU, "heads_item": HI, "head_dim": K, "gate_reduction": 2}
    options.update(kw)
    return build_model("ranktower", schema, **options).double()


def test_registry_builds_ranktower_with_default_sizes():
    model = build_model("ranktower", make_schema())
    assert isinstance(model, RankTower)
    assert (model.user_net.heads, model.item_net.heads, model.user_net.head_dim) == (4, 4, 16)
    assert model.temperature.item() == pytest.approx(0.2)


@pytest.mark.parametrize("history", [True, False])
def test_output_shapes(history):
    schema = make_schema(history=history)
    model = make_model(schema)
    batch = make_batch(schema)
    b, n = batch.mask.shape
    assert model.user_multi_embedding(batch).shape == (b, HU, K)
    assert model.item_multi_embedding(batch).shape == (b, n, HI, K)
    e_u, e_i = model.cross_attend(model.user_multi_embedding(batch), model.item_multi_embedding(batch))
    assert e_u.shape == (b, n, HU, K) and e_i.shape == (b, n, HI, K)
    scores = model(batch)
    assert scores.shape == (b, n) and scores.dtype == torch.float64 and torch.isfinite(scores).all()
    # |s| <= H_u / tau: a sum of H_u cosines over the temperature
    assert scores.abs().max() <= HU / model.temperature + 1e-9


def test_cached_serving_path_equals_the_full_forward():
    schema = make_schema()
    model = make_model(schema, seed=1)
    batch = make_batch(schema, seed=1)
    with torch.no_grad():
        full = model(batch)
        user = model.user_multi_embedding(batch)
        items = model.item_multi_embedding(batch)
        torch.testing.assert_close(model.score_from_cache(user, items), full, rtol=0, atol=0)
        # items encoded from ids alone (a cache keyed by item) give the same tower output
        torch.testing.assert_close(model.encode_items(batch.item), items, rtol=0, atol=0)
        # one shared candidate set [N, H_i, k] (e.g. a cached corpus) scores every user against it
        corpus = items[2]
        shared = model.score_from_cache(user, corpus)
        per_request = model.score_from_cache(user, corpus.unsqueeze(0).expand(user.shape[0], -1, -1, -1))
        assert shared.shape == full.shape
        torch.testing.assert_close(shared, per_request, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(shared[2], full[2], rtol=1e-12, atol=1e-12)


def test_max_similarity_against_a_brute_force_loop():
    g = torch.Generator().manual_seed(3)
    user = torch.randn(2, 3, HU, K, generator=g, dtype=torch.float64)
    item = torch.randn(2, 3, HI, K, generator=g, dtype=torch.float64)
    got = max_similarity(user, item)
    u, i = user.numpy(), item.numpy()
    want = np.zeros((2, 3))
    for b in range(2):
        for n in range(3):
            for p in range(HU):
                cosines = [
                    float(u[b, n, p] @ i[b, n, q]) / (np.linalg.norm(u[b, n, p]) * np.linalg.norm(i[b, n, q]))
                    for q in range(HI)
                ]
                want[b, n] += max(cosines)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_score_is_max_similarity_over_the_learnable_temperature():
    schema = make_schema()
    model = make_model(schema)
    batch = make_batch(schema)
    with torch.no_grad():
        e_u, e_i = model.cross_attend(model.user_multi_embedding(batch), model.item_multi_embedding(batch))
        base = max_similarity(e_u, e_i)
        torch.testing.assert_close(model(batch), base / 0.2)
        model.log_tau.fill_(math.log(0.5))
        torch.testing.assert_close(model(batch), base / 0.5)
    model(batch).sum().backward()
    assert model.log_tau.grad is not None and torch.isfinite(model.log_tau.grad) and model.log_tau.grad != 0


def _gau_reference(unit: GatedCrossAttention, x_q: np.ndarray, x_kv: np.ndarray) -> np.ndarray:
    """GAU cross-attention written out with numpy loops over query rows: [P, k], [Q, k] -> [P, k]."""

    def lin(layer, x):
        return x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()

    def silu(x):
        return x / (1.0 + np.exp(-x))

    q, k, v = silu(lin(unit.query, x_q)), silu(lin(unit.key, x_kv)), silu(lin(unit.value, x_kv))
    u = 1.0 / (1.0 + np.exp(-lin(unit.gate, x_q)))
    d = x_q.shape[-1]
    rows = []
    for p in range(x_q.shape[0]):
        logits = np.array([q[p] @ k[j] / math.sqrt(d) for j in range(x_kv.shape[0])])
        w = np.exp(logits - logits.max())
        w /= w.sum()
        rows.append(u[p] * (w @ v))
    h = x_q + lin(unit.out, np.stack(rows))
    mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    ln = unit.norm
    return (h - mean) / np.sqrt(var + ln.eps) * ln.weight.detach().numpy() + ln.bias.detach().numpy()


def test_gated_cross_attention_matches_the_gau_formula_in_both_directions():
    schema = make_schema()
    model = make_model(schema, seed=2)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for unit in (model.user_to_item, model.item_to_user):
            unit.norm.weight.uniform_(0.5, 1.5)
            unit.norm.bias.uniform_(-0.3, 0.3)
    batch = make_batch(schema, seed=2)
    with torch.no_grad():
        user = model.user_multi_embedding(batch)
        items = model.item_multi_embedding(batch)
        e_u, e_i = model.cross_attend(user, items)
    b, n = 3, 1
    np.testing.assert_allclose(
        e_u[b, n].numpy(), _gau_reference(model.user_to_item, user[b].numpy(), items[b, n].numpy()), rtol=1e-10
    )
    np.testing.assert_allclose(
        e_i[b, n].numpy(), _gau_reference(model.item_to_user, items[b, n].numpy(), user[b].numpy()), rtol=1e-10
    )


def _embedding_grads(model: RankTower, batch: RequestBatch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (model(batch) * batch.mask).sum().backward()
    return {name: table.weight.grad.clone() for name, table in model.encoder.tables.items()}


class _Constant(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class _UndetachedGatedNetwork(torch.nn.Module):
    """The same gated network without the stop-gradient on the gate's input (to show the test can fail)."""

    def __init__(self, net: MultiHeadGatedNetwork) -> None:
        super().__init__()
        self.net = net
        self.heads, self.head_dim = net.heads, net.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.net.gate(x).view(*x.shape[:-1], self.net.heads, self.net.head_dim)
        return self.net(x) / self.net.gate(x.detach()).view_as(gate) * gate


def test_gate_input_is_detached_from_the_embeddings():
    schema = make_schema()
    batch = make_batch(schema, seed=4)
    model = make_model(schema, seed=4)
    grads = _embedding_grads(model, batch)
    assert any(bool(g.abs().sum() > 0) for g in grads.values())
    # the gates still learn
    for net in (model.user_net, model.item_net):
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.gate.parameters())

    # gates replaced by constants of the same value: the embeddings get exactly the same gradient
    frozen = make_model(schema, seed=4)
    with torch.no_grad():
        for name in ("user_net", "item_net"):
            captured = {}
            net = getattr(frozen, name)
            handle = net.gate.register_forward_hook(lambda m, i, o, c=captured: c.setdefault("out", o.detach()))
            frozen(batch)
            handle.remove()
            net.gate = _Constant(captured["out"])
    frozen_grads = _embedding_grads(frozen, batch)
    for name in grads:
        torch.testing.assert_close(frozen_grads[name], grads[name], rtol=1e-12, atol=1e-14)

    # without the stop-gradient the same values give different embedding gradients
    leaky = make_model(schema, seed=4)
    leaky.user_net = _UndetachedGatedNetwork(leaky.user_net)
    leaky.item_net = _UndetachedGatedNetwork(leaky.item_net)
    with torch.no_grad():
        torch.testing.assert_close(leaky(batch), model(batch))
    leaky_grads = _embedding_grads(leaky, batch)
    assert any(not torch.allclose(leaky_grads[n], grads[n], rtol=1e-6, atol=1e-10) for n in grads)


def test_padded_candidates_and_history_do_not_change_valid_scores():
    schema = make_schema()
    model = make_model(schema, seed=5)
    batch = make_batch(schema, seed=5)
    with torch.no_grad():
        ref = model(batch)
        g = torch.Generator().manual_seed(6)
        junk_items = {
            k: torch.where(batch.mask, v, torch.randint(1, schema.feature(k).vocab_size, v.shape, generator=g))
            for k, v in batch.item.items()
        }
        junk_history = {
            h.name: torch.where(
                batch.history_mask,
                batch.history[h.name],
                torch.randint(1, schema.feature(h.item_field).vocab_size, batch.history_mask.shape, generator=g),
            )
            for h in schema.history
        }
        other = model(RequestBatch(**{**batch.__dict__, "item": junk_items, "history": junk_history}))
        torch.testing.assert_close(other[batch.mask], ref[batch.mask], rtol=0, atol=0)
        # every (user, item) pair is scored on its own: dropping candidate slots changes no other score
        sub = RequestBatch(
            **{
                **batch.__dict__,
                "item": {k: v[:, 1:4] for k, v in batch.item.items()},
                "mask": batch.mask[:, 1:4],
                "stage": batch.stage[:, 1:4],
                "label": batch.label[:, 1:4],
            }
        )
        torch.testing.assert_close(model(sub), ref[:, 1:4], rtol=1e-12, atol=1e-12)


def test_gradients_are_finite_including_an_empty_history():
    schema = make_schema()
    model = make_model(schema, seed=7)
    batch = make_batch(schema, seed=7)
    assert not batch.history_mask[0].any()
    (model(batch) * batch.mask).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_trains_on_a_fixed_batch():
    """A few Adam steps of the hybrid loss on one batch reduce it (the pieces are wired to learn)."""
    from cascade_ranking import losses

    schema = make_schema(num_candidates=8)
    model = make_model(schema, seed=8).float()
    batch = make_batch(schema, batch_size=6, seed=8)
    stage = torch.tensor([2, 2, 2, 1, 1, 0, 0, 0]).expand(6, -1).clone()
    label = stage.float() + torch.rand(6, 8, generator=torch.Generator().manual_seed(9)) * (stage == 2)
    loss_fn = losses.build("ranktower", keep=[4])
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    values = []
    for _ in range(40):
        out = loss_fn([model(batch)], label=label, mask=batch.mask, stage=stage)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        values.append(out.loss.item())
    assert values[-1] < 0.7 * values[0]


def test_bad_sizes_and_shapes_raise():
    schema = make_schema()
    with pytest.raises(ValueError, match="heads"):
        build_model("ranktower", schema, heads_user=0)
    with pytest.raises(ValueError, match="head_dim"):
        build_model("ranktower", schema, head_dim=0)
    with pytest.raises(ValueError, match="gate_reduction"):
        build_model("ranktower", schema, gate_reduction=0)
    with pytest.raises(ValueError, match="temperature"):
        build_model("ranktower", schema, temperature=0.0)
    model = make_model(schema)
    batch = make_batch(schema)
    user, items = model.user_multi_embedding(batch), model.item_multi_embedding(batch)
    with pytest.raises(ValueError, match="user_emb"):
        model.score_from_cache(user[:, :, :-1], items)
    with pytest.raises(ValueError, match="item_emb"):
        model.score_from_cache(user, items[..., :1, :])
    with pytest.raises(ValueError, match="requests"):
        model.score_from_cache(user, items[:2])


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_multi_head_gated_network_is_one_mlp_split_into_heads_times_a_detached_gate(layers):
    """eq. 3: e^h = MLP(X)^h * sigmoid(gMLP(X))^h, the MLP of ``layers`` linear layers, gate in -> in // r -> H k."""
    torch.manual_seed(0)
    net = MultiHeadGatedNetwork(12, heads=3, head_dim=4, hidden=10, reduction=4, layers=layers).double()
    linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == layers and linears[-1].out_features == 12
    assert net.gate[0].out_features == 3  # 12 // 4
    x = torch.randn(5, 12, dtype=torch.float64)
    h = x.numpy()
    for i, lin in enumerate(linears):
        h = h @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
        if i < layers - 1:
            h = np.maximum(h, 0.0)
    g1, g2 = net.gate[0], net.gate[2]
    gate = np.maximum(x.numpy() @ g1.weight.detach().numpy().T + g1.bias.detach().numpy(), 0.0)
    gate = 1.0 / (1.0 + np.exp(-(gate @ g2.weight.detach().numpy().T + g2.bias.detach().numpy())))
    want = (h * gate).reshape(5, 3, 4)
    np.testing.assert_allclose(net(x).detach().numpy(), want, rtol=1e-12, atol=1e-14)


def test_log2_embedding_sizes_follow_the_paper_rule():
    from cascade_ranking.models.embedding import FeatureEncoder, log2_embedding_dim

    assert [log2_embedding_dim(v) for v in (1, 2, 65535, 65536, 131072, 10**6)] == [16, 16, 16, 16, 17, 19]
    schema = make_schema()
    big = schema.model_copy(
        update={
            "features": [
                f.model_copy(update={"vocab_size": 200_000}) if f.name == "item_id" else f for f in schema.features
            ]
        }
    )
    enc = FeatureEncoder(big, "log2")
    assert enc.field_dims == {"user_id": 16, "hour": 16, "item_id": 17, "genre": 16}
    assert (enc.user_context_dim, enc.history_dim, enc.item_dim) == (32, 33, 33) and not enc.uniform
    model = build_model("ranktower", big, emb_dim="log2", hidden=8, head_dim=4)
    batch = make_batch(big, seed=1)
    assert model(batch).shape == batch.mask.shape
    with pytest.raises(ValueError, match="COLD needs one embedding size"):
        build_model("cold", big, emb_dim="log2")
    with pytest.raises(ValueError, match="emb_dim"):
        FeatureEncoder(schema, "log10")

"""Stage models: shapes, masking, the DSSM serving split, DIN's fast attention against the reference form."""

from __future__ import annotations

import pytest
import torch

from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.models import DIN, DSSM, MLP, FeatureEncoder, available_models, build_model
from cascade_ranking.models.din import pairwise_relu_projection
from cascade_ranking.types import RequestBatch
from conftest import random_batch

MODELS = ["dssm", "din", "mlp"]


def make_schema(history: bool = True, length: int = 6, num_candidates: int = 7) -> DatasetSchema:
    # Item fields in a different order than the history fields, to exercise the table/column mapping.
    features = [
        {"name": "user_id", "role": "user", "vocab_size": 30},
        {"name": "gender", "role": "user", "vocab_size": 3},
        {"name": "hour", "role": "context", "vocab_size": 25},
        {"name": "item_id", "role": "item", "vocab_size": 50},
        {"name": "year", "role": "item", "vocab_size": 6},
        {"name": "genre", "role": "item", "vocab_size": 9},
    ]
    hist = [{"name": "hist_genre", "item_field": "genre"}, {"name": "hist_item", "item_field": "item_id"}]
    return DatasetSchema(
        name="toy",
        features=features,
        history=hist if history else [],
        history_length=length if history else 0,
        num_candidates=num_candidates,
        funnel_positions=["neg", "pos"],
        keep=[5, 3],
        gt_num=2,
        partitions=[],
    )


def make_batch(schema: DatasetSchema, batch_size: int = 5, seed: int = 0) -> RequestBatch:
    return random_batch(schema, batch_size, seed)


def build(name: str, schema: DatasetSchema, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, schema, emb_dim=4, hidden=16, **kw).double()


def test_registry_lists_the_models_and_rejects_unknown_names():
    assert available_models() == ["cold", "dat", "din", "dssm", "inttower", "lr", "mlp", "ranktower"]
    schema = make_schema()
    assert isinstance(build_model("DSSM", schema), DSSM)
    assert isinstance(build_model("din", schema), DIN)
    assert isinstance(build_model("mlp", schema), MLP)
    with pytest.raises(ValueError, match="available models"):
        build_model("xgboost", schema)
    with pytest.raises(ValueError, match="hidden"):
        build_model("dssm", schema, hidden=2)
    with pytest.raises(ValueError, match="emb_dim"):
        build_model("din", schema, emb_dim=0)


def test_default_sizes_follow_the_lcron_release():
    """emb 8, hidden 128: DSSM towers 128-64-32, DIN attention 80-1 and scorer 128-128-32-1, MLP 128-64-32-1."""
    schema = make_schema()
    e, n_uc, n_item, n_hist = 8, 3, 3, 2

    def widths(seq: torch.nn.Sequential) -> list[tuple[int, int]]:
        return [(m.in_features, m.out_features) for m in seq if isinstance(m, torch.nn.Linear)]

    dssm = build_model("dssm", schema)
    assert widths(dssm.user_tower) == [((n_uc + n_hist) * e, 128), (128, 64), (64, 32)]
    assert widths(dssm.item_tower) == [(n_item * e, 128), (128, 64), (64, 32)]
    din = build_model("din", schema)
    assert widths(din.attention) == [(2 * n_hist * e, 80), (80, 1)]
    assert widths(din.mlp) == [((n_uc + n_hist + n_item) * e, 128), (128, 128), (128, 32), (32, 1)]
    mlp = build_model("mlp", schema)
    assert widths(mlp.mlp) == [((n_uc + n_hist + n_item) * e, 128), (128, 64), (64, 32), (32, 1)]
    assert isinstance(dssm.user_tower[-1], torch.nn.Linear)  # no activation on the tower output


@pytest.mark.parametrize("name", MODELS)
def test_every_model_scores_every_candidate(name):
    schema = make_schema()
    batch = make_batch(schema)
    torch.manual_seed(0)
    out = build_model(name, schema)(batch)
    assert out.shape == (5, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_padded_candidates_and_history_do_not_change_valid_scores(name):
    schema = make_schema()
    batch = make_batch(schema)
    model = build(name, schema)
    ref = model(batch)
    g = torch.Generator().manual_seed(1)
    # Garbage ids in padded candidate slots and padded history slots.
    noisy_item = {
        k: torch.where(batch.mask, v, torch.randint(1, schema.feature(k).vocab_size, v.shape, generator=g))
        for k, v in batch.item.items()
    }
    noisy_hist = {
        h.name: torch.where(
            batch.history_mask,
            batch.history[h.name],
            torch.randint(1, schema.feature(h.item_field).vocab_size, batch.history_mask.shape, generator=g),
        )
        for h in schema.history
    }
    noisy = RequestBatch(**{**batch.__dict__, "item": noisy_item, "history": noisy_hist})
    torch.testing.assert_close(model(noisy)[batch.mask], ref[batch.mask], rtol=0, atol=1e-12)
    # Extra padded candidate and history slots.
    pad_n, pad_l = 3, 4
    wider = RequestBatch(
        **{
            **batch.__dict__,
            "item": {k: torch.nn.functional.pad(v, (0, pad_n)) for k, v in batch.item.items()},
            "mask": torch.nn.functional.pad(batch.mask, (0, pad_n)),
            "history": {k: torch.nn.functional.pad(v, (0, pad_l)) for k, v in batch.history.items()},
            "history_mask": torch.nn.functional.pad(batch.history_mask, (0, pad_l)),
        }
    )
    torch.testing.assert_close(model(wider)[:, :7][batch.mask], ref[batch.mask], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_scores_follow_candidate_slots_and_requests_are_independent(name):
    schema = make_schema()
    batch = make_batch(schema)
    model = build(name, schema)
    ref = model(batch)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    permuted = RequestBatch(
        **{**batch.__dict__, "item": {k: v[:, perm] for k, v in batch.item.items()}, "mask": batch.mask[:, perm]}
    )
    torch.testing.assert_close(model(permuted), ref[:, perm], rtol=0, atol=1e-12)
    rows = torch.tensor([3, 0])
    torch.testing.assert_close(model(batch.select(rows)), ref[rows], rtol=0, atol=1e-12)


def test_dssm_score_is_the_dot_product_of_its_towers():
    schema = make_schema()
    batch = make_batch(schema)
    model = build("dssm", schema)
    u, v = model.user_embedding(batch), model.item_embedding(batch)
    assert u.shape == (5, model.embedding_dim) and v.shape == (5, 7, model.embedding_dim)
    expected = torch.stack([v[b] @ u[b] for b in range(5)])
    torch.testing.assert_close(model(batch), expected, rtol=0, atol=1e-12)
    # The item tower on a flat corpus of ids equals the per-candidate item embedding.
    corpus = {k: t.reshape(-1) for k, t in batch.item.items()}
    torch.testing.assert_close(model.encode_items(corpus).reshape(5, 7, -1), v, rtol=0, atol=1e-12)


def test_encoder_shares_item_tables_with_history_and_pools_over_valid_slots():
    schema = make_schema()
    batch = make_batch(schema)
    enc = FeatureEncoder(schema, emb_dim=3).double()
    assert sorted(enc.tables) == sorted(f.name for f in schema.features)  # no separate history tables
    h = enc.history(batch)
    assert h.shape == (5, 6, 6)
    torch.testing.assert_close(h[..., :3], enc.tables["genre"](batch.history["hist_genre"]))
    torch.testing.assert_close(h[..., 3:], enc.tables["item_id"](batch.history["hist_item"]))
    for t in enc.tables.values():
        assert torch.all(t.weight[0] == 0)  # padding id embeds to zeros
    pooled = enc.pooled_history(batch)
    for b in range(5):
        valid = batch.history_mask[b]
        expected = h[b][valid].mean(0) if valid.any() else torch.zeros(6, dtype=h.dtype)
        torch.testing.assert_close(pooled[b], expected)
    assert enc.user_context(batch).shape == (5, 9)
    assert enc.items(batch).shape == (5, 7, 9)
    assert enc.items(batch, ["genre"]).shape == (5, 7, 3)


def din_reference(model: DIN, batch: RequestBatch) -> torch.Tensor:
    """DIN the straightforward way: concatenate (history slot, candidate) pairs, then the attention MLP."""
    enc = model.encoder
    u, c, h = enc.user_context(batch), enc.items(batch), enc.history(batch)
    key = enc.items(batch, enc.history_item_fields)
    b, n, length = c.shape[0], c.shape[1], h.shape[1]
    pairs = torch.cat([h[:, None].expand(b, n, length, -1), key[:, :, None].expand(b, n, length, -1)], dim=-1)
    logits = model.attention(pairs).squeeze(-1)  # [B, N, L]
    weights = torch.zeros_like(logits)
    for i in range(b):
        valid = batch.history_mask[i]
        if valid.any():
            weights[i, :, valid] = torch.softmax(logits[i][:, valid], dim=-1)
    x = torch.cat([u[:, None].expand(b, n, -1), weights @ h, c], dim=-1)
    return model.mlp(x).squeeze(-1)


def test_din_fast_attention_equals_the_concatenation_reference():
    schema = make_schema(length=9, num_candidates=8)
    batch = make_batch(schema, batch_size=6, seed=3)
    model = build("din", schema)
    fast = model(batch)
    ref = din_reference(model, batch)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    g = torch.randn(fast.shape, dtype=fast.dtype, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters()]
    grads_fast = torch.autograd.grad(fast, params, g)
    grads_ref = torch.autograd.grad(ref, params, g)
    for p_fast, p_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(p_fast, p_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_pairwise_relu_projection_matches_broadcast_and_passes_gradcheck(chunk):
    g = torch.Generator().manual_seed(0)
    hh = torch.randn(5, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    cc = torch.randn(5, 6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    out = pairwise_relu_projection(hh, cc, w, chunk=chunk)
    expected = torch.relu(hh[:, None] + cc[:, :, None]) @ w
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: pairwise_relu_projection(a, b, c, chunk=chunk), (hh, cc, w))
    with pytest.raises(ValueError, match="hh must be"):
        pairwise_relu_projection(hh[0], cc, w)


def test_din_attention_is_a_masked_softmax_and_empty_history_gives_zero_interest():
    schema = make_schema()
    batch = make_batch(schema)
    model = build("din", schema)
    w = model.attention_weights(batch)
    assert w.shape == (5, 7, 6)
    hm = batch.history_mask[:, None, :].expand_as(w)
    assert torch.all(w[~hm] == 0)
    has_history = batch.history_mask.any(-1)
    assert not has_history[0]
    torch.testing.assert_close(w.sum(-1)[has_history], torch.ones(int(has_history.sum()), 7, dtype=w.dtype))
    assert torch.all(w[0] == 0) and torch.all(model.interest(batch)[0] == 0)
    scores = model(batch)
    scores[0].sum().backward()  # the empty-history request alone: finite gradients, no NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_flow_to_every_layer_and_not_to_padding_rows(name):
    schema = make_schema()
    batch = make_batch(schema)
    model = build(name, schema)
    out = model(batch)
    (out * batch.mask).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if "tables" not in pname:
            assert p.grad.abs().sum() > 0, pname
    for fname, table in model.encoder.tables.items():
        assert torch.all(table.weight.grad[0] == 0), fname  # padding_idx=0 never learns
        assert table.weight.grad[1:].abs().sum() > 0, fname


@pytest.mark.parametrize("name", MODELS)
def test_double_precision_on_cpu_is_deterministic(name):
    schema = make_schema()
    batch = make_batch(schema)
    a, b = build(name, schema, seed=7), build(name, schema, seed=7)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.dtype == torch.float64 and torch.equal(pa, pb)
    out_a, out_b = a(batch), b(batch)
    assert out_a.dtype == torch.float64
    assert torch.equal(out_a, out_b) and torch.equal(a(batch), out_a)
    out_a.sum().backward()
    out_b.sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


@pytest.mark.parametrize("name", MODELS)
def test_models_work_without_history_fields(name):
    schema = make_schema(history=False)
    batch = make_batch(schema)
    out = build(name, schema)(batch)
    assert out.shape == (5, 7) and torch.isfinite(out).all()


def test_missing_or_malformed_fields_raise_clear_errors():
    schema = make_schema()
    batch = make_batch(schema)
    model = build("din", schema)
    no_genre = RequestBatch(**{**batch.__dict__, "item": {k: v for k, v in batch.item.items() if k != "genre"}})
    with pytest.raises(KeyError, match="genre"):
        model(no_genre)
    bad_user = RequestBatch(**{**batch.__dict__, "user": {**batch.user, "gender": batch.user["gender"][:, None]}})
    with pytest.raises(ValueError, match="gender"):
        model(bad_user)
    float_ids = RequestBatch(**{**batch.__dict__, "context": {"hour": batch.context["hour"].float()}})
    with pytest.raises(TypeError, match="hour"):
        model(float_ids)

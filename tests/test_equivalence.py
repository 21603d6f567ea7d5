"""Every fast path equals a straightforward reference formulation: values and gradients, float64, random inputs.

The fast paths (see ``benchmarks/run.py`` for what they buy): DIN's fused pairwise attention kernel; the
embedding lookups grouped per table with their ``index_add_`` gradient; the per-request part of the first
MLP layer; NeuralSort's ``O(N log N)`` row sums and fused logits; the place sums of the permutation matrices
by one matrix product; the loader's single gather per column. Each reference below is the textbook form:
concatenations, ``[B, N, N]`` differences, slices, per-field ``F.embedding``, per-batch fancy indexing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascade_ranking import losses, sorting
from cascade_ranking.data.loader import iterate_partition, shuffle_candidates
from cascade_ranking.data.schema import CategoricalField, DatasetSchema, HistoryField
from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.models import build_model
from cascade_ranking.models.din import pairwise_relu_projection
from cascade_ranking.models.embedding import FeatureEncoder, embedding_lookup, feed_forward, mlp_forward
from cascade_ranking.sorting import neural_sort, pairwise_abs_sum, soft_topk_membership, split_column_sums
from cascade_ranking.types import RequestBatch
from conftest import make_tiny_dataset

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------------
def ref_abs_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x.unsqueeze(-1) - x.unsqueeze(-2)).abs() * mask.unsqueeze(-2).to(x.dtype)).sum(-1)


def ref_neural_sort(scores: torch.Tensor, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Grover et al. 2019, eq. 5, over the valid candidates, written with the [B, N, N] difference tensor."""
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    s = torch.where(mask, scores, torch.zeros_like(scores))
    m = mask.to(s.dtype)
    n = m.sum(-1, keepdim=True)
    a_sum = ref_abs_sum(s, mask)
    ranks = torch.arange(1, scores.shape[-1] + 1, dtype=s.dtype)
    logits = (n + 1 - 2 * ranks).unsqueeze(-1) * s.unsqueeze(-2) - a_sum.unsqueeze(-2)
    logits = (logits / tau).masked_fill(~mask.unsqueeze(-2), torch.finfo(s.dtype).min)
    p = torch.softmax(logits, dim=-1)
    row_valid = torch.arange(scores.shape[-1]).unsqueeze(0) < mask.sum(-1, keepdim=True)
    return p * (row_valid.unsqueeze(-1) & mask.unsqueeze(-2)).to(p.dtype)


def ref_split(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return p[..., :k, :].sum(-2), p[..., k:, :].sum(-2)


def random_scores(b: int, n: int, seed: int, *, ties: bool = True, dtype=torch.float64):
    g = gen(seed)
    s = torch.randn(b, n, generator=g, dtype=dtype) * 3
    if ties:  # exact ties, within and across requests
        s[:, 1] = s[:, 0]
        s[0, :] = s[0, 0]
        s[:, -1] = torch.round(s[:, -1])
        s[:, -2] = torch.round(s[:, -2])
    mask = torch.rand(b, n, generator=g) > 0.25
    mask[1] = False  # an all-masked request
    mask[2] = True
    return s, mask


# ------------------------------------------------------------------------------------------------------
# sorting
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_pairwise_abs_sum_equals_the_difference_tensor_with_identical_gradients(ties):
    x, mask = random_scores(6, 11, seed=1, ties=ties)
    x.requires_grad_(True)
    fast, ref = pairwise_abs_sum(x, mask), ref_abs_sum(x, mask)
    torch.testing.assert_close(fast, ref, **TIGHT)
    g = torch.randn(fast.shape, generator=gen(2), dtype=x.dtype)
    (d_fast,) = torch.autograd.grad(fast, x, g)
    (d_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(d_fast, d_ref, **TIGHT)  # also at ties: abs'(0) = 0, as autograd


def test_pairwise_abs_sum_float32_is_exact_to_float32_rounding_and_double_differentiable():
    x, mask = random_scores(4, 50, seed=3, ties=False, dtype=torch.float32)
    x = x * 1e3 + 1e4  # large offset, small spread: the prefix sums are taken in float64
    torch.testing.assert_close(pairwise_abs_sum(x, mask), ref_abs_sum(x.double(), mask).float(), rtol=1e-6, atol=0)
    x64, mask64 = random_scores(3, 6, seed=4, ties=False)
    assert torch.autograd.gradgradcheck(lambda v: pairwise_abs_sum(v, mask64), (x64.requires_grad_(True),))


@pytest.mark.parametrize("tau", [1e-4, 0.5, 50.0])
def test_neural_sort_equals_the_textbook_formulation(tau):
    s, mask = random_scores(7, 9, seed=5)
    s = s.requires_grad_(True)
    fast, ref = neural_sort(s, tau=tau, mask=mask), ref_neural_sort(s, tau=tau, mask=mask)
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-12)
    g = torch.randn(fast.shape, generator=gen(6), dtype=s.dtype)
    (d_fast,) = torch.autograd.grad(fast, s, g)
    (d_ref,) = torch.autograd.grad(ref, s, g)
    torch.testing.assert_close(d_fast, d_ref, rtol=1e-8, atol=1e-10)


def test_neural_sort_extreme_logits_and_no_mask():
    s = torch.tensor([[1e4, -1e4, 0.0, 3.0], [2.0, 2.0, 2.0, -5.0]], dtype=torch.float64, requires_grad=True)
    fast, ref = neural_sort(s, tau=1.0), ref_neural_sort(s, tau=1.0)
    torch.testing.assert_close(fast, ref, **TIGHT)
    torch.testing.assert_close(*[torch.autograd.grad(p.sum(-2)[:, 0].sum(), s)[0] for p in (fast, ref)], **TIGHT)


@pytest.mark.parametrize("k", [0, 3, 9, 20])
def test_split_column_sums_and_soft_topk_equal_slices(k):
    s, mask = random_scores(5, 9, seed=7)
    p = ref_neural_sort(s, tau=0.7, mask=mask).requires_grad_(True)
    top, rest = split_column_sums(p, k)
    ref_top, ref_rest = ref_split(p, k)
    torch.testing.assert_close(top, ref_top, **TIGHT)
    torch.testing.assert_close(rest, ref_rest, **TIGHT)
    g1, g2 = torch.randn(2, *top.shape, generator=gen(8), dtype=p.dtype)
    d_fast = torch.autograd.grad((top * g1).sum() + (rest * g2).sum(), p)[0]
    d_ref = torch.autograd.grad((ref_top * g1).sum() + (ref_rest * g2).sum(), p)[0]
    torch.testing.assert_close(d_fast, d_ref, **TIGHT)
    member = soft_topk_membership(p, k)
    ref_member = ref_top / (p.detach().sum(-2) + 1e-6)
    torch.testing.assert_close(member, ref_member, **TIGHT)
    torch.testing.assert_close(torch.autograd.grad(member.sum(), p)[0], torch.autograd.grad(ref_member.sum(), p)[0])


# ------------------------------------------------------------------------------------------------------
# sorting losses: the loss code with the fast kernels vs the same code with the reference kernels
# ------------------------------------------------------------------------------------------------------
def loss_inputs(b: int = 6, n: int = 12, stages: int = 2, seed: int = 9):
    g = gen(seed)
    logits = [torch.randn(b, n, generator=g, dtype=torch.float64) * 2 for _ in range(stages)]
    label = torch.randint(0, 5, (b, n), generator=g).double()  # many ties
    mask = torch.rand(b, n, generator=g) > 0.2
    mask[0] = True
    mask[1] = False
    stage = torch.randint(0, stages + 2, (b, n), generator=g)
    return logits, label, mask, stage


@pytest.mark.parametrize("method", ["lcron", "arf", "arf_v2"])
@pytest.mark.parametrize("stages", [2, 3])
def test_sorting_losses_equal_their_reference_kernels(monkeypatch, method, stages):
    keep = [8, 6, 4][:stages]
    logits, label, mask, stage = loss_inputs(stages=stages)

    def run():
        fn = losses.build(method, keep=keep, gt_num=3).double()
        xs = [x.clone().requires_grad_(True) for x in logits]
        out = fn(xs, label=label, mask=mask, stage=stage)
        out.loss.backward()
        return out, [x.grad for x in xs], [p.grad for p in fn.parameters()]

    fast = run()
    module = __import__(f"cascade_ranking.losses.{'lcron' if method == 'lcron' else 'arf'}", fromlist=["x"])
    import cascade_ranking.losses.base as base

    monkeypatch.setattr(module, "neural_sort", ref_neural_sort)
    monkeypatch.setattr(base, "neural_sort", ref_neural_sort)
    monkeypatch.setattr(module, "split_column_sums", ref_split)
    ref = run()
    torch.testing.assert_close(fast[0].loss, ref[0].loss, rtol=1e-9, atol=1e-12)
    for name in fast[0].parts:
        torch.testing.assert_close(fast[0].parts[name], ref[0].parts[name], rtol=1e-9, atol=1e-12)
    for a, b in zip(fast[1] + fast[2], ref[1] + ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------
def make_schema(contiguous_keys: bool) -> DatasetSchema:
    items = ["item_id", "genre", "year"] if contiguous_keys else ["year", "item_id", "genre"]
    vocab = {"item_id": 40, "genre": 7, "year": 5}
    return DatasetSchema(
        name="eq",
        features=[
            CategoricalField(name="user_id", role="user", vocab_size=20),
            CategoricalField(name="age", role="user", vocab_size=6),
            CategoricalField(name="hour", role="context", vocab_size=25),
            *[CategoricalField(name=f, role="item", vocab_size=vocab[f]) for f in items],
        ],
        history=[HistoryField(name="h_item", item_field="item_id"), HistoryField(name="h_genre", item_field="genre")],
        history_length=7,
        num_candidates=9,
        funnel_positions=["a", "b", "c", "d"],
        keep=[6, 4],
        gt_num=2,
        partitions=[],
    )


def make_batch(schema: DatasetSchema, b: int = 5, seed: int = 0) -> RequestBatch:
    g = gen(seed)
    length, n = schema.history_length, schema.num_candidates

    def ids(field, shape):
        return torch.randint(0, schema.feature(field).vocab_size, shape, generator=g)  # 0 = padding included

    hist_len = torch.randint(0, length + 1, (b,), generator=g)
    hist_len[0] = 0
    history_mask = torch.arange(length)[None] < hist_len[:, None]
    mask = torch.rand(b, n, generator=g) > 0.2
    return RequestBatch(
        user={f.name: ids(f.name, (b,)) for f in schema.fields_with_role("user")},
        context={f.name: ids(f.name, (b,)) for f in schema.fields_with_role("context")},
        history={h.name: ids(h.item_field, (b, length)) * history_mask for h in schema.history},
        history_mask=history_mask,
        item={f.name: ids(f.name, (b, n)) for f in schema.fields_with_role("item")},
        mask=mask,
        stage=torch.zeros(b, n, dtype=torch.long),
        label=torch.rand(b, n, generator=g),
        request_id=torch.arange(b),
    )


def ref_embed(enc: FeatureEncoder, batch: RequestBatch):
    """Per-field ``F.embedding`` lookups, as ``torch.nn.Embedding`` does them."""

    def emb(table, ids):
        return F.embedding(ids, enc.tables[table].weight, padding_idx=0)

    u = torch.cat(
        [emb(f, batch.user[f]) for f in enc.user_fields] + [emb(f, batch.context[f]) for f in enc.context_fields], -1
    )
    h = torch.cat([emb(t, batch.history[n]) for n, t in zip(enc.history_fields, enc.history_item_fields)], -1)
    c = torch.cat([emb(f, batch.item[f]) for f in enc.item_fields], -1)
    return u, h, c


def ref_pooled(h: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
    m = history_mask.to(h.dtype)
    return (h * m[..., None]).sum(1) / m.sum(-1, keepdim=True).clamp_min(1.0)


def ref_model(model, name: str, batch: RequestBatch) -> torch.Tensor:
    enc = model.encoder
    u, h, c = ref_embed(enc, batch)
    b, n = c.shape[:2]
    if name == "dssm":
        user = model.user_tower(torch.cat([u, ref_pooled(h, batch.history_mask)], -1))
        return torch.einsum("bnd,bd->bn", model.item_tower(c), user)
    if name == "mlp":
        req = torch.cat([u, ref_pooled(h, batch.history_mask)], -1)
        return model.mlp(torch.cat([req[:, None].expand(b, n, -1), c], -1)).squeeze(-1)
    e = enc.emb_dim  # DIN: concatenate every (history slot, candidate key) pair
    key = torch.cat(
        [c[..., enc.item_fields.index(f) * e : (enc.item_fields.index(f) + 1) * e] for f in enc.history_item_fields], -1
    )
    length = h.shape[1]
    pairs = torch.cat([h[:, None].expand(b, n, length, -1), key[:, :, None].expand(b, n, length, -1)], -1)
    logits = model.attention(pairs).squeeze(-1).masked_fill(~batch.history_mask[:, None], torch.finfo(h.dtype).min)
    weights = torch.softmax(logits, -1) * batch.history_mask[:, None].to(h.dtype)
    return model.mlp(torch.cat([u[:, None].expand(b, n, -1), weights @ h, c], -1)).squeeze(-1)


@pytest.mark.parametrize("name", ["dssm", "din", "mlp"])
@pytest.mark.parametrize("contiguous_keys", [True, False])
def test_models_equal_their_reference_forms(name, contiguous_keys):
    schema = make_schema(contiguous_keys)
    batch = make_batch(schema, seed=1)
    torch.manual_seed(0)
    model = build_model(name, schema, emb_dim=4, hidden=16).double()
    fast, ref = model(batch), ref_model(model, name, batch)
    torch.testing.assert_close(fast, ref, **TIGHT)
    g = torch.randn(fast.shape, generator=gen(3), dtype=fast.dtype)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(fast, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, **TIGHT)
    for table in model.encoder.tables.values():  # the padding row never gets a gradient
        (d,) = torch.autograd.grad(model(batch), table.weight, g)
        assert torch.all(d[0] == 0)


def test_encode_equals_the_separate_lookups_and_embedding_lookup_equals_f_embedding():
    schema = make_schema(False)
    batch = make_batch(schema, seed=2)
    enc = FeatureEncoder(schema, 3).double()
    out = enc.encode(batch)
    for a, b in zip(
        (out.user_context, out.history, out.items), (enc.user_context(batch), enc.history(batch), enc.items(batch))
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert enc.encode(batch, history=False, items=False).history is None
    table = enc.tables["item_id"]
    ids = [batch.item["item_id"], batch.history["h_item"], torch.tensor([0, 3, 3, 39])]
    g = [torch.randn(*x.shape, 3, generator=gen(i), dtype=torch.float64) for i, x in enumerate(ids)]
    fast = embedding_lookup(table, ids)
    ref = [F.embedding(x, table.weight, padding_idx=0) for x in ids]
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    d_fast = torch.autograd.grad(fast, table.weight, g)[0]
    d_ref = torch.autograd.grad(ref, table.weight, g)[0]
    torch.testing.assert_close(d_fast, d_ref, **TIGHT)
    with pytest.raises(IndexError):
        embedding_lookup(table, [torch.tensor([40])])


@pytest.mark.parametrize("with_request", [False, True])
def test_mlp_forward_equals_the_sequential_on_the_concatenation(with_request):
    torch.manual_seed(0)
    g = gen(4)
    mlp = feed_forward([5 + (3 if with_request else 0), 8, 6, 1]).double()
    x = torch.randn(4, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    req = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    if with_request:
        fast = mlp_forward(mlp, x, request=req)
        ref = mlp(torch.cat([req[:, None].expand(4, 7, 3), x], -1))
        inputs = [x, req, *mlp.parameters()]
    else:
        fast, ref = mlp_forward(mlp, x), mlp(x)
        inputs = [x, *mlp.parameters()]
    torch.testing.assert_close(fast, ref, **TIGHT)
    w = torch.randn(fast.shape, generator=g, dtype=fast.dtype)
    for a, b in zip(torch.autograd.grad(fast, inputs, w), torch.autograd.grad(ref, inputs, w)):
        torch.testing.assert_close(a, b, **TIGHT)
    x0 = x.detach().clone()
    mlp_forward(mlp, x, request=req if with_request else None)
    assert torch.equal(x, x0)  # the caller's input is never modified in place
    with pytest.raises(ValueError, match="do not fit"):
        mlp_forward(mlp, x, request=req[:, :2])


@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("fused", [True, False])
def test_din_pairwise_kernel_equals_broadcast_incl_exact_zeros(monkeypatch, chunk, fused):
    import cascade_ranking.models.din as din

    if not fused:  # the path of devices (and torch builds) without the fused add + ReLU kernel
        monkeypatch.setattr(din, "_FUSED_ADD_RELU", None)
    g = gen(5)
    hh = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    cc = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    cc[:, 0, :] = -hh[:, 2, :]  # pre-activations exactly 0: ReLU'(0) = 0 on both sides
    w = torch.randn(4, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (hh, cc, w)]
    fast = pairwise_relu_projection(*inputs, chunk=chunk)
    ref = torch.relu(hh[:, None] + cc[:, :, None]) @ w
    torch.testing.assert_close(fast, ref, **TIGHT)
    out_g = torch.randn(fast.shape, generator=g, dtype=fast.dtype)
    for a, b in zip(torch.autograd.grad(fast, inputs, out_g), torch.autograd.grad(ref, inputs, out_g)):
        torch.testing.assert_close(a, b, **TIGHT)


# ------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------
def ref_kendall(s, label, mask):
    """Kendall's tau-b from the [B, N, N] sign matrices of scores and labels."""

    def signs(x):
        a, b = x.unsqueeze(2), x.unsqueeze(1)
        return (a > b).double() - (a < b).double()

    pair = (mask.unsqueeze(1) & mask.unsqueeze(2)).double()
    ds, dy = signs(s) * pair, signs(label) * pair
    c = (ds * dy).sum((-2, -1)) / 2
    ts, ty = (ds != 0).sum((-2, -1)) / 2, (dy != 0).sum((-2, -1)) / 2
    tau = c / ts.double().sqrt() / ty.double().sqrt()
    return torch.where((ts > 0) & (ty > 0), tau.clamp(-1, 1), torch.full_like(tau, float("nan")))


def ref_higher_tied(s, mask):
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)
    higher = ((s.unsqueeze(1) > s.unsqueeze(2)) & pair).sum(-1)
    tied = ((s.unsqueeze(1) == s.unsqueeze(2)) & pair).sum(-1)
    return higher, tied


def metric_inputs(seed: int):
    g = gen(seed)
    s = torch.randint(-3, 4, (6, 10), generator=g).float()  # many score ties
    s[0, 0], s[0, 1], s[2, 3] = float("inf"), float("-inf"), float("inf")
    label = torch.randint(0, 4, (6, 10), generator=g).float()
    mask = torch.rand(6, 10, generator=g) > 0.3
    mask[1] = False
    mask[3] = True
    return s, label, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_and_ndcg_counts_equal_the_pairwise_formulation(seed):
    from cascade_ranking.metrics import _counts_below, _kendall

    s, label, mask = metric_inputs(seed)
    torch.testing.assert_close(
        _kendall(s, label, mask), ref_kendall(s, label, mask), rtol=0, atol=1e-15, equal_nan=True
    )
    below, upto = _counts_below(s, mask)
    higher, tied = ref_higher_tied(s, mask)
    n = mask.sum(-1, keepdim=True)
    valid = mask  # counts are compared at valid candidates (padded ones are never read)
    assert torch.equal((n - upto)[valid], higher[valid])
    assert torch.equal((upto - below)[valid], tied[valid])


# ------------------------------------------------------------------------------------------------------
# loader
# ------------------------------------------------------------------------------------------------------
def ref_iterate(directory, schema, partition, *, batch_size, shuffle, rng, shard=(0, 1)):
    """The loader the straightforward way: shuffle candidate slots in place, then fancy-index every batch."""
    arrays = read_partition(directory, schema, partition)
    order = rng.permutation(len(arrays["request_id"])) if shuffle else np.arange(len(arrays["request_id"]))
    order = order[shard[0] :: shard[1]]
    shuffle_candidates(arrays, schema.num_candidates, rng)
    for start in range(0, len(order), batch_size):
        yield {k: v[order[start : start + batch_size]] for k, v in arrays.items()}


@pytest.mark.parametrize("shuffle,shard", [(True, (0, 1)), (False, (0, 1)), (True, (1, 3))])
def test_loader_yields_exactly_the_reference_batches(tmp_path, shuffle, shard):
    make_tiny_dataset(tmp_path / "d", requests_per_partition=37)
    schema = open_dataset(tmp_path / "d")
    part = schema.partitions[0]
    fast = list(
        iterate_partition(
            tmp_path / "d", schema, part, batch_size=8, shuffle=shuffle, rng=np.random.default_rng(3), shard=shard
        )
    )
    ref = list(
        ref_iterate(
            tmp_path / "d", schema, part, batch_size=8, shuffle=shuffle, rng=np.random.default_rng(3), shard=shard
        )
    )
    assert len(fast) == len(ref) > 1
    for b, r in zip(fast, ref):
        assert torch.equal(b.request_id, torch.from_numpy(r["request_id"]))
        for f in schema.fields_with_role("item"):
            assert torch.equal(b.item[f.name], torch.from_numpy(r[f"item.{f.name}"]))
        for h in schema.history:
            assert torch.equal(b.history[h.name], torch.from_numpy(r[f"history.{h.name}"]))
        assert torch.equal(b.history_mask, torch.from_numpy(r[f"history.{schema.history[0].name}"] != 0))
        assert torch.equal(b.mask, torch.from_numpy(r["mask"]))
        assert torch.equal(b.label, torch.from_numpy(r["label"]))
        assert b.stage.dtype == torch.int64 and torch.equal(b.stage, torch.from_numpy(r["stage"]).long())
        assert torch.equal(b.user["user_id"], torch.from_numpy(r["user.user_id"]))


def test_read_partition_without_copy_reads_the_same_values(tmp_path):
    make_tiny_dataset(tmp_path / "d")
    schema = open_dataset(tmp_path / "d")
    a = read_partition(tmp_path / "d", schema, schema.partitions[1])
    b = read_partition(tmp_path / "d", schema, schema.partitions[1], copy=False)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
        assert a[k].flags.writeable


def test_module_reexports_are_the_fast_paths():
    assert sorting.neural_sort is neural_sort and "pairwise_abs_sum" in sorting.__all__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_paths_on_cuda_equal_cpu():
    s, mask = random_scores(5, 9, seed=11)
    for fn in (
        lambda x: pairwise_abs_sum(x, mask.to(x.device)),
        lambda x: neural_sort(x, tau=0.5, mask=mask.to(x.device)),
    ):
        cpu = s.clone().requires_grad_(True)
        gpu = s.cuda().requires_grad_(True)
        torch.testing.assert_close(fn(gpu).cpu(), fn(cpu), **TIGHT)
        torch.testing.assert_close(
            torch.autograd.grad(fn(gpu).sum(), gpu)[0].cpu(), torch.autograd.grad(fn(cpu).sum(), cpu)[0]
        )
    schema = make_schema(False)
    batch = make_batch(schema, seed=4)
    for name in ("dssm", "din", "mlp"):
        torch.manual_seed(0)
        model = build_model(name, schema, emb_dim=4, hidden=16).double()
        out_cpu = model(batch)
        grads_cpu = torch.autograd.grad(out_cpu.sum(), list(model.parameters()))
        model = model.cuda()
        out_gpu = model(batch.to("cuda"))
        grads_gpu = torch.autograd.grad(out_gpu.sum(), list(model.parameters()))
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, **TIGHT)
        for a, b in zip(grads_gpu, grads_cpu):
            torch.testing.assert_close(a.cpu(), b, **TIGHT)


@pytest.mark.parametrize("bad", [-1, -(2**62), 20, 2**40])
def test_one_pass_id_check_rejects_what_min_max_rejects(tmp_path, bad):
    from cascade_ranking.data.store import StoreError, validate_arrays

    make_tiny_dataset(tmp_path / "d")
    schema = open_dataset(tmp_path / "d")
    arrays = read_partition(tmp_path / "d", schema, schema.partitions[0])
    validate_arrays("ok", schema, arrays)  # user_id vocabulary is 20: ids 0..19 pass
    arrays["user.user_id"] = arrays["user.user_id"].copy()
    arrays["user.user_id"][3] = bad
    with pytest.raises(StoreError, match=r"user\.user_id.*outside the vocabulary \[0, 20\)"):
        validate_arrays("bad", schema, arrays)

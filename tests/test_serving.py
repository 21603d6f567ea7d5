"""Serving over the whole catalogue: recommend() against a brute-force reference (every stage scores every
catalogue item through the model's own forward, numpy selects), exclusion, errors, catalogue, FAISS index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from cascade_ranking.data.store import read_partition  # noqa: E402
from cascade_ranking.serving import (  # noqa: E402
    Catalogue,
    IndexOptions,
    ItemIndex,
    Recommender,
    RequestError,
    Requests,
    read_requests,
)
from cascade_ranking.serving.requests import make_batch  # noqa: E402
from cascade_ranking.training.checkpoint import load_run  # noqa: E402
from cascade_ranking.training.config import TrainConfig  # noqa: E402
from cascade_ranking.training.loop import train
from conftest import make_tiny_dataset  # noqa: E402

#: cascades to serve: (models, dataset keep) — DSSM retrieval with DIN, RankTower (cached multi-embeddings),
#: and a three-stage DSSM -> MLP -> DIN
CASCADES = {
    "dssm-din": (["dssm", "din"], (8, 5)),
    "dssm-ranktower": (["dssm", "ranktower"], (8, 5)),
    "dssm-mlp-din": (["dssm", "mlp", "din"], (9, 6, 4)),
    "mlp-din": (["mlp", "din"], (8, 5)),  # retrieval that does not decouple: every item is scored
}


@pytest.fixture(scope="module", params=sorted(CASCADES))
def run(request, tmp_path_factory):
    models, keep = CASCADES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    make_tiny_dataset(root / "data", keep=keep)
    config = TrainConfig(data=root / "data", device="cpu", method="lcron", models=models, seed=1)
    return train(config, data=root / "data", run_dir=root / "run").run_dir


def _test_requests(run_dir) -> tuple[Requests, dict]:
    loaded = load_run(run_dir)
    schema, data = loaded.schema, loaded.data
    part = schema.partitions_with_role("test")[0]
    return read_requests(data / part.file_name, schema), read_partition(data, schema, part)


def _reference(run_dir, requests: Requests, keep, k, excluded_keys):
    """Brute force, independent of the serving code: every stage model scores *every* catalogue item through
    its ordinary forward (a RequestBatch whose candidates are the whole catalogue, excluded items masked);
    numpy (float64, stable sorts) runs the top-k chain."""
    loaded = load_run(run_dir)
    schema, data, cascade = loaded.schema, loaded.data, loaded.cascade.eval()
    arrays = [read_partition(data, schema, p) for p in schema.partitions]
    key = schema.fields_with_role("item")[0].name
    names = [f.name for f in schema.fields_with_role("item")]
    ids = np.concatenate([a[f"item.{key}"][a["mask"]] for a in arrays])
    items = {n: np.concatenate([a[f"item.{n}"][a["mask"]] for a in arrays]) for n in names}
    uniq, first = np.unique(ids, return_index=True)
    cat = {n: torch.from_numpy(items[n][first]) for n in names}
    m = len(uniq)
    out_items, out_scores = [], []
    t = requests.tensors()
    for b in range(len(requests)):
        one = {g: {n: v[b : b + 1] for n, v in t[g].items()} for g in ("user", "context", "history")}
        mask = torch.from_numpy(~np.isin(uniq, excluded_keys[b]))[None]
        batch = make_batch(
            one["user"], one["context"], one["history"], t["history_mask"][b : b + 1],
            {n: v[None] for n, v in cat.items()}, mask,
        )  # fmt: skip
        with torch.no_grad():
            logits = [x[0].double().numpy() for x in cascade(batch)]
        pool = np.flatnonzero(mask[0].numpy())
        for s, size in zip(logits, keep):
            pool = pool[np.argsort(-s[pool], kind="stable")[:size]]
        out_items.append(uniq[pool[:k]])
        out_scores.append([s[pool[:k]] for s in logits])
    assert m == len(uniq)
    return out_items, out_scores


@pytest.mark.parametrize("exclude_history", [True, False])
def test_recommend_equals_brute_force_over_the_catalogue(run, exclude_history):
    requests, _ = _test_requests(run)
    requests = requests.select(slice(0, 12))
    rec = Recommender.from_run(run)  # exact index by default
    keep = (rec.catalogue.size - 6, 12, 7)[: len(rec.stages)]  # a history holds at most 5 items
    k = 5
    out = rec.recommend(requests, k, keep=keep, exclude_history=exclude_history)
    key = rec.catalogue.key
    excluded = [
        np.concatenate([requests.exclude[b], requests.history[key][b] if exclude_history else []]).astype(np.int64)
        for b in range(len(requests))
    ]
    ref_items, ref_scores = _reference(run, requests, keep, k, excluded)
    for b in range(len(requests)):
        np.testing.assert_array_equal(out.item[b][out.valid[b]], ref_items[b])
        for i, stage in enumerate(s.name for s in rec.stages):
            np.testing.assert_allclose(out.scores[stage][b], ref_scores[b][i], rtol=1e-5, atol=1e-5)
    assert set(out.latency_ms) == {s.name for s in rec.stages}
    for i, stage in enumerate(s.name for s in rec.stages):  # every stage kept exactly its keep size
        assert out.kept[stage].shape == (len(requests), keep[i]) and (out.kept[stage] >= 0).all()


def test_excluded_items_are_never_recommended(run):
    requests, _ = _test_requests(run)
    rec = Recommender.from_run(run)
    plain = rec.recommend(requests.select(slice(0, 4)), 3, exclude_history=False)
    ban = [plain.item[b, :2] for b in range(4)]  # the two best of each request, now excluded
    base = requests.select(slice(0, 4))
    banned = Requests(base.user, base.context, base.history, ban, base.request_id)
    out = rec.recommend(banned, 3, exclude_history=False)
    for b in range(4):
        assert not set(out.item[b]) & set(ban[b])
        assert out.item[b, 0] == plain.item[b, 2]  # the third best moves up
    hist = rec.recommend(base, 3, exclude_history=True)
    key = rec.catalogue.key
    for b in range(4):
        assert not set(hist.item[b][hist.valid[b]]) & set(base.history[key][b][base.history[key][b] > 0])


def test_k_and_keep_are_checked(run):
    requests, _ = _test_requests(run)
    rec = Recommender.from_run(run)
    one = requests.select(slice(0, 1))
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            rec.recommend(one, k)
    with pytest.raises(ValueError, match=r"larger than the catalogue \(\d+ items\)"):
        rec.recommend(one, rec.catalogue.size + 1)
    with pytest.raises(ValueError, match="exceeds what the last stage keeps"):
        rec.recommend(one, rec.keep[-1] + 1)
    with pytest.raises(ValueError, match="the first stage cannot keep"):
        rec.recommend(one, 1, keep=[rec.catalogue.size + 1, *rec.keep[1:]])
    with pytest.raises(ValueError, match="one size per stage"):
        rec.recommend(one, 1, keep=[5])


def test_unknown_ids_and_bad_requests_are_named(tmp_path):
    schema = make_tiny_dataset(tmp_path / "d")
    good = {"user.user_id": [3], "context.hour": [5], "history.item_id": [[1, 2]], "history.genre": [[2, 3]]}
    r = Requests.from_columns(schema, good)
    assert r.history["item_id"].shape == (1, schema.history_length) and r.history_mask().sum() == 2
    with pytest.raises(RequestError, match=r"user.user_id=999 .* vocabulary is \[0, 20\)"):
        Requests.from_columns(schema, {**good, "user.user_id": [999]})
    with pytest.raises(RequestError, match="'context.hour' missing"):
        Requests.from_columns(schema, {"user.user_id": [3]})
    with pytest.raises(RequestError, match="holds 7 items; the model reads at most 5"):
        Requests.from_columns(schema, {**good, "history.item_id": [[1] * 7], "history.genre": [[1] * 7]})
    with pytest.raises(RequestError, match="different lengths"):
        Requests.from_columns(schema, {**good, "history.genre": [[2]]})
    with pytest.raises(RequestError, match="one integer id per request"):
        Requests.from_columns(schema, {**good, "user.user_id": ["a"]})


def test_catalogue_from_dataset_holds_every_candidate_item(tmp_path):
    schema = make_tiny_dataset(tmp_path / "d")
    cat = Catalogue.from_dataset(tmp_path / "d", schema)
    arrays = [read_partition(tmp_path / "d", schema, p) for p in schema.partitions]
    expected = np.unique(np.concatenate([a["item.item_id"][a["mask"]] for a in arrays]))
    np.testing.assert_array_equal(cat.keys, expected)
    np.testing.assert_array_equal(cat.fields["genre"], expected % 5 + 1)
    np.testing.assert_array_equal(cat.rows_of(np.array([expected[3], 10_000])), [3, -1])
    cat.write(tmp_path / "cat.parquet")
    back = Catalogue.read(tmp_path / "cat.parquet", schema)
    np.testing.assert_array_equal(back.keys, cat.keys)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_index_matches_numpy_top_k(kind):
    rng = np.random.default_rng(0)
    items, queries = rng.normal(size=(5000, 16)), rng.normal(size=(20, 16))
    index = ItemIndex(items, IndexOptions(kind=kind, nprobe=64, ef_search=256))
    scores, rows = index.search(queries, 50)
    truth = np.argsort(-(queries @ items.T), axis=1)[:, :50]
    recall = np.mean([len(set(rows[b]) & set(truth[b])) / 50 for b in range(20)])
    assert recall == 1.0 if kind == "exact" else recall >= 0.9
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, rows, 1), rtol=1e-4, atol=1e-4)


def test_export_reproduces_every_kind_of_stage(run, tmp_path):
    """DSSM (user tower + item table), RankTower (user multi-embedding + cached scorer), DIN / MLP (whole model):
    the exported programs reproduce the run's scores to 1e-5."""
    from cascade_ranking.serving.export import export_recommender, load_export

    requests, _ = _test_requests(run)
    rec = Recommender.from_run(run)
    keep = (rec.catalogue.size - 6, 12, 7)[: len(rec.stages)]
    export_recommender(rec, tmp_path / "export")
    exported = load_export(tmp_path / "export", keep=keep)
    a, b = rec.recommend(requests, 5, keep=keep), exported.recommend(requests, 5)
    np.testing.assert_array_equal(a.item, b.item)
    for stage in a.scores:
        np.testing.assert_allclose(b.scores[stage], a.scores[stage], rtol=0, atol=1e-5)


def test_catalogue_metrics_match_sklearn_and_the_funnel_is_nested(run):
    from sklearn.metrics import ndcg_score

    from cascade_ranking.serving.evaluation import evaluate_run_on_catalogue, ndcg_at_k, recall_at_k

    rng = np.random.default_rng(0)
    for _ in range(20):
        catalogue = np.arange(1, 60)
        positives = rng.choice(catalogue, size=rng.integers(1, 12), replace=False)
        gains = rng.integers(1, 6, size=len(positives)).astype(float)
        recommended = rng.choice(catalogue, size=10, replace=False)
        truth = np.zeros(len(catalogue))
        truth[positives - 1] = gains
        score = np.zeros(len(catalogue))
        score[recommended - 1] = np.arange(10, 0, -1)  # rank 1 highest; every other item below
        assert ndcg_at_k(recommended, positives, gains) == pytest.approx(ndcg_score([truth], [score], k=10))
        assert recall_at_k(recommended, positives) == len(set(recommended) & set(positives)) / len(positives)
    rec = Recommender.from_run(run)
    m = evaluate_run_on_catalogue(run, k=3, keep=(rec.catalogue.size - 6, 12, 7)[: len(rec.stages)])
    assert m["catalogue_requests"] == 50 and m["catalogue_skipped"] == 0
    recalls = [m[f"catalogue_recall/{s.name}"] for s in rec.stages] + [m["catalogue_recall@3"]]
    assert all(a >= b for a, b in zip(recalls, recalls[1:])) and 0 < recalls[0] <= 1
    assert 0 <= m["catalogue_ndcg@3"] <= 1 and m["latency_ms/p99"] > 0

"""Cascade: stage validation, scoring every candidate with every stage, and the real top-k chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cascade_ranking.cascade import Cascade, Stage, select_chain, topk_mask
from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.models import build_model
from cascade_ranking.types import RequestBatch, check_keep


class Fixed(nn.Module):
    """A stage model returning the scores it was given (to test the cascade apart from real models)."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.scores = scores

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        return self.scale * self.scores


def toy_schema() -> DatasetSchema:
    return DatasetSchema(
        name="toy",
        features=[
            {"name": "user_id", "role": "user", "vocab_size": 10},
            {"name": "item_id", "role": "item", "vocab_size": 20},
        ],
        history=[{"name": "hist_item", "item_field": "item_id"}],
        history_length=3,
        num_candidates=6,
        funnel_positions=["neg", "pos"],
        keep=[4, 2],
        gt_num=2,
        partitions=[],
    )


def toy_batch(b: int = 3, n: int = 6) -> RequestBatch:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 4:] = False
    return RequestBatch(
        user={"user_id": torch.randint(1, 10, (b,), generator=g)},
        context={},
        history={"hist_item": torch.randint(0, 20, (b, 3), generator=g)},
        history_mask=torch.ones(b, 3, dtype=torch.bool),
        item={"item_id": torch.randint(1, 20, (b, n), generator=g) * mask},
        mask=mask,
        stage=torch.zeros(b, n, dtype=torch.long),
        label=torch.rand(b, n, generator=g),
        request_id=torch.arange(b),
    )


def brute_force_chain(scores: np.ndarray, mask: np.ndarray, keep: list[int]) -> list[np.ndarray]:
    """Per request, per stage: sort the pool by (-score, slot) and keep the first k (numpy, loops)."""
    num_stages, b, n = scores.shape
    out = np.zeros((num_stages, b, n), dtype=bool)
    for r in range(b):
        pool = [j for j in range(n) if mask[r, j]]
        for i, k in enumerate(keep):
            pool = sorted(pool, key=lambda j, i=i: (-scores[i, r, j], j))[:k]
            out[i, r, pool] = True
    return list(out)


def test_cascade_validates_stages_and_keep_sizes():
    m = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="strictly decrease"):
        Cascade([Stage("retrieval", m, 20), Stage("prerank", nn.Linear(1, 1), 20)])
    with pytest.raises(ValueError, match="positive integers"):
        Cascade([Stage("retrieval", m, 0)])
    with pytest.raises(ValueError, match="positive integers"):
        Cascade([Stage("retrieval", m, 2.5)])
    with pytest.raises(ValueError, match="unique"):
        Cascade([Stage("rank", m, 3), Stage("rank", nn.Linear(1, 1), 2)])
    with pytest.raises(ValueError, match="at least one"):
        Cascade([])
    with pytest.raises(ValueError, match="without '.'"):
        Cascade([Stage("a.b", m, 3)])
    with pytest.raises(TypeError, match="nn.Module"):
        Cascade([Stage("retrieval", lambda batch: batch.label, 3)])
    with pytest.raises(ValueError, match="strictly decrease"):
        check_keep([30, 40])
    assert check_keep([40, 30, 20]) == (40, 30, 20)


def test_forward_scores_every_candidate_with_every_stage():
    schema = toy_schema()
    batch = toy_batch()
    torch.manual_seed(0)
    models = [build_model("dssm", schema, emb_dim=4, hidden=8), build_model("din", schema, emb_dim=4, hidden=8)]
    cascade = Cascade([Stage("retrieval", models[0], 4), Stage("prerank", models[1], 2)])
    assert cascade.stage_names == ("retrieval", "prerank") and cascade.keep == (4, 2) and len(cascade) == 2
    assert [s.model for s in cascade.stages] == models
    logits = cascade(batch)
    assert len(logits) == 2
    for out, model in zip(logits, models):
        torch.testing.assert_close(out, model(batch))
    n_params = sum(p.numel() for m in models for p in m.parameters())
    assert sum(p.numel() for p in cascade.parameters()) == n_params
    selected = cascade.select(logits, batch.mask)
    assert [s.sum(-1).tolist() for s in selected] == [[4, 4, 4], [2, 2, 2]]


def test_forward_rejects_a_stage_that_does_not_return_b_by_n():
    batch = toy_batch()
    cascade = Cascade([Stage("retrieval", Fixed(torch.zeros(3)), 4)])
    with pytest.raises(ValueError, match="retrieval"):
        cascade(batch)


@pytest.mark.parametrize("keep", [[5], [6, 3], [7, 4, 2]])
def test_select_matches_a_brute_force_top_k_chain(keep):
    g = torch.Generator().manual_seed(len(keep))
    b, n = 200, 8
    # Small integer scores: many ties, resolved by slot order in both implementations.
    scores = torch.randint(0, 4, (len(keep), b, n), generator=g).float()
    n_valid = torch.randint(0, n + 1, (b,), generator=g)
    mask = torch.rand(b, n, generator=g).argsort(-1) < n_valid[:, None]  # random valid slots, some empty
    selected = select_chain(list(scores), mask, keep)
    expected = brute_force_chain(scores.numpy(), mask.numpy(), keep)
    for got, want in zip(selected, expected):
        assert got.dtype == torch.bool
        np.testing.assert_array_equal(got.numpy(), want)


def test_select_keeps_whole_pool_when_small_and_never_selects_masked_candidates():
    scores = torch.tensor([[float("inf"), -float("inf"), 1.0, -float("inf"), 5.0, 0.0]])
    mask = torch.tensor([[False, True, False, True, False, True]])
    first, second = select_chain([scores, -scores], mask, [4, 2])
    assert first.tolist() == [[False, True, False, True, False, True]]  # 3 valid < keep 4: all kept
    assert second.tolist() == [[False, True, False, True, False, False]]  # -scores: the two -inf rise


def test_select_with_a_generator_is_a_valid_top_k_chain():
    g = torch.Generator().manual_seed(0)
    b, n, keep = 300, 10, [7, 5, 3]
    scores = torch.randint(0, 3, (3, b, n), generator=g).double()
    mask = torch.rand(b, n, generator=g) > 0.2
    selected = select_chain(list(scores), mask, keep, generator=torch.Generator().manual_seed(1))
    pool = mask
    for s, sel, k in zip(scores, selected, keep):
        assert torch.all(sel <= pool)
        assert torch.equal(sel.sum(-1), pool.sum(-1).clamp(max=k))
        worst_kept = torch.where(sel, s, torch.full_like(s, float("inf"))).min(-1).values
        best_dropped = torch.where(pool & ~sel, s, torch.full_like(s, -float("inf"))).max(-1).values
        assert torch.all(worst_kept >= best_dropped)
        pool = sel


def test_random_tie_breaking_favours_no_slot():
    b, n, k = 4000, 8, 3
    scores = torch.zeros(b, n)
    mask = torch.ones(b, n, dtype=torch.bool)
    slot_order = topk_mask(scores, mask, k)
    assert torch.all(slot_order[:, :k]) and not slot_order[:, k:].any()  # documented deterministic rule
    rand = topk_mask(scores, mask, k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rand.sum(-1), torch.full((b,), k))
    freq = rand.double().mean(0)
    p = k / n
    sigma = (p * (1 - p) / b) ** 0.5
    assert torch.all((freq - p).abs() < 5 * sigma), freq


def test_select_rejects_bad_inputs():
    scores = torch.zeros(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="2 stages but 1 keep"):
        select_chain([scores, scores], mask, [3])
    with pytest.raises(ValueError, match="NaN"):
        select_chain([torch.full((2, 5), float("nan"))], mask, [3])
    with pytest.raises(TypeError, match="bool"):
        select_chain([scores], mask.float(), [3])
    with pytest.raises(ValueError, match="does not match"):
        select_chain([scores], mask[:, :4], [3])
    with pytest.raises(ValueError, match="strictly decrease"):
        select_chain([scores, scores], mask, [3, 3])
    with pytest.raises(TypeError, match="list"):
        select_chain(scores, mask, [3])
    assert topk_mask(scores, mask, 9).all()  # k above N keeps everything valid

"""Cascade metrics against independent implementations: scikit-learn, scipy, brute-force set intersection."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import ndcg_score

from cascade_ranking.metrics import (
    CascadeMetrics,
    ground_truth_weights,
    joint_recall,
    kendall_tau,
    ndcg_at_k,
    stage_recall,
)


def random_inputs(seed: int, b: int = 120, n: int = 10, stages: int = 2, ties: bool = True, min_valid: int = 0):
    g = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(0, 4, (stages, b, n), generator=g).float()
        label = torch.randint(0, 4, (b, n), generator=g).float()
    else:
        logits = torch.randn(stages, b, n, generator=g)
        label = torch.rand(b, n, generator=g).argsort(-1).float()  # distinct labels per request
    n_valid = torch.randint(min_valid, n + 1, (b,), generator=g)
    mask = torch.rand(b, n, generator=g).argsort(-1) < n_valid[:, None]
    label = label * mask  # padded slots hold 0, as the loader writes them
    return list(logits), label, mask


def brute_force_recall(stage_logits, label, mask, keep, gt_num):
    """Python sets: final set of the top-k chain (ties by slot) ∩ top gt_num labels (distinct labels)."""
    out = []
    for r in range(label.shape[0]):
        valid = [j for j in range(label.shape[1]) if mask[r, j]]
        if not valid:
            out.append(0.0)
            continue
        pool = valid
        for s, k in zip(stage_logits, keep):
            pool = sorted(pool, key=lambda j, s=s: (-float(s[r, j]), j))[:k]
        truth = set(sorted(valid, key=lambda j: -float(label[r, j]))[:gt_num])
        out.append(len(set(pool) & truth) / min(gt_num, len(valid)))
    return np.array(out)


# -- recall -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [[6], [8, 5], [9, 7, 4]])
@pytest.mark.parametrize("ties", [False, True])
def test_joint_recall_equals_brute_force_set_intersection(keep, ties):
    logits, label, mask = random_inputs(len(keep), stages=len(keep), ties=ties)
    if ties:  # keep ties in scores, but make the ground truth unambiguous
        label = (torch.rand(label.shape, generator=torch.Generator().manual_seed(5)).argsort(-1).float()) * mask
    got = joint_recall(logits, label, mask, keep, gt_num=3)
    assert got.dtype == torch.float64 and got.shape == (120,)
    np.testing.assert_allclose(got.numpy(), brute_force_recall(logits, label, mask, keep, 3), rtol=0, atol=1e-12)


def test_stage_recall_equals_brute_force_and_a_one_stage_chain():
    logits, label, mask = random_inputs(7, stages=1, ties=False)
    got = stage_recall(logits[0], label, mask, k=4, gt_num=3)
    np.testing.assert_allclose(got.numpy(), brute_force_recall(logits, label, mask, [4], 3), atol=1e-12)
    torch.testing.assert_close(got, joint_recall(logits, label, mask, [4], 3))


def test_recall_hand_examples():
    label = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    retrieval = torch.tensor([[6.0, 5.0, 4.0, 3.0, -1.0, 2.0]])  # keeps slots 0, 1, 2, 3
    prerank = torch.tensor([[0.0, 1.0, 0.5, 9.0, 9.0, 9.0]])  # among those, keeps 3, 1
    # ground truth (gt_num 2) = slots 0, 1; final set = {1, 3}: recall 1/2
    assert joint_recall([retrieval, prerank], label, mask, [4, 2], 2).item() == 0.5
    # prerank alone keeps {3, 4} -> 0; retrieval alone keeps its top 2 {0, 1} -> 1
    assert stage_recall(prerank, label, mask, 2, 2).item() == 0.0
    assert stage_recall(retrieval, label, mask, 2, 2).item() == 1.0
    # fewer valid candidates than gt_num: divide by n_valid (3), two of them kept
    few = torch.tensor([[True, False, True, False, True, False]])
    assert joint_recall([retrieval, prerank], label, few, [2, 1], 5).item() == pytest.approx(1 / 3)
    # no valid candidate: 0, no NaN
    none = torch.zeros(1, 6, dtype=torch.bool)
    assert joint_recall([retrieval, prerank], label, none, [4, 2], 2).item() == 0.0


def test_ground_truth_ties_share_the_remaining_places():
    label = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    w = ground_truth_weights(label, mask, 2)  # one place left for three tied 2.0s; slot 5 padded
    torch.testing.assert_close(w, torch.tensor([[1.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]], dtype=torch.float64))
    w = ground_truth_weights(label, mask, 10)  # more places than valid candidates: all valid count fully
    torch.testing.assert_close(w, mask.double())


def test_recall_with_label_ties_is_the_average_over_ground_truth_choices():
    """Brute force: average the set recall over every way of filling the ground truth's tied places."""
    logits, label, mask = random_inputs(11, b=80, n=7, stages=2, ties=True)
    keep, gt_num = [5, 3], 3
    got = joint_recall(logits, label, mask, keep, gt_num).numpy()
    for r in range(80):
        valid = [j for j in range(7) if mask[r, j]]
        if not valid:
            assert got[r] == 0.0
            continue
        pool = valid
        for s, k in zip(logits, keep):
            pool = sorted(pool, key=lambda j, s=s: (-float(s[r, j]), j))[:k]
        g = min(gt_num, len(valid))
        cut = sorted((float(label[r, j]) for j in valid), reverse=True)[g - 1]
        above = [j for j in valid if label[r, j] > cut]
        tied = [j for j in valid if label[r, j] == cut]
        recalls = [len(set(pool) & set(above + list(c))) / g for c in itertools.combinations(tied, g - len(above))]
        assert got[r] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_recall_is_invariant_to_candidate_order_without_score_ties():
    logits, label, mask = random_inputs(3, stages=2, ties=False)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    a = joint_recall(logits, label, mask, [6, 4], 3)
    b = joint_recall([s[:, perm] for s in logits], label[:, perm], mask[:, perm], [6, 4], 3)
    torch.testing.assert_close(a, b)


def test_random_tie_breaking_gives_unbiased_recall_for_a_constant_scorer():
    b, n = 3000, 10
    label = torch.arange(n, dtype=torch.float32).expand(b, n)  # ground truth = the last 2 slots
    mask = torch.ones(b, n, dtype=torch.bool)
    constant = [torch.zeros(b, n), torch.zeros(b, n)]
    by_slot = joint_recall(constant, label, mask, [6, 4], 2)
    assert torch.all(by_slot == 0)  # slot order keeps slots 0-3: the documented deterministic rule
    rand = joint_recall(constant, label, mask, [6, 4], 2, generator=torch.Generator().manual_seed(0))
    assert rand.mean().item() == pytest.approx(4 / 10, abs=0.02)  # E = keep[-1] / N


# -- NDCG -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 25])
@pytest.mark.parametrize("ties", [False, True])
def test_ndcg_matches_scikit_learn(k, ties):
    logits, label, mask = random_inputs(20 + k, b=100, n=12, stages=1, ties=ties)
    got = ndcg_at_k(logits[0], label, mask, k=k).numpy()
    for r in range(100):
        m = mask[r].numpy()
        if m.sum() >= 2:
            y, s = label[r].numpy()[m][None], logits[0][r].numpy()[m][None]
            assert got[r] == pytest.approx(ndcg_score(y, s, k=k), abs=1e-12), r
        elif m.sum() == 1:
            assert got[r] == (1.0 if label[r][mask[r]].item() > 0 else 0.0)
        else:
            assert got[r] == 0.0


def test_ndcg_rejects_negative_labels_and_is_order_invariant():
    logits, label, mask = random_inputs(2, stages=1, ties=True)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        ndcg_at_k(logits[0], label, mask), ndcg_at_k(logits[0][:, perm], label[:, perm], mask[:, perm])
    )
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(logits[0], label - 5.0, torch.ones_like(mask))


# -- Kendall tau ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_matches_scipy(ties):
    logits, label, mask = random_inputs(30, b=150, n=9, stages=1, ties=ties)
    got = kendall_tau(logits[0], label, mask).numpy()
    for r in range(150):
        m = mask[r].numpy()
        if m.sum() < 2:
            assert math.isnan(got[r])
            continue
        want = kendalltau(logits[0][r].numpy()[m], label[r].numpy()[m]).statistic
        if math.isnan(want):
            assert math.isnan(got[r]), r
        else:
            assert got[r] == pytest.approx(want, abs=1e-12), r


def test_kendall_tau_of_perfect_and_reversed_orders():
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert kendall_tau(s, s * 10, mask).item() == pytest.approx(1.0)
    assert kendall_tau(s, -s, mask).item() == pytest.approx(-1.0)
    assert math.isnan(kendall_tau(s, torch.ones_like(s), mask).item())  # constant labels: undefined


# -- streaming --------------------------------------------------------------------------------------
def test_streaming_accumulation_equals_one_big_batch_and_per_request_means():
    stage_names, keep = ("retrieval", "prerank", "rank"), [8, 6, 4]
    logits, label, mask = random_inputs(40, b=90, n=10, stages=3, ties=True)
    whole = CascadeMetrics(stage_names, keep, gt_num=3, ndcg_k=5)
    whole.update(logits, label, mask)
    streamed = CascadeMetrics(stage_names, keep, gt_num=3, ndcg_k=5)
    other = CascadeMetrics(stage_names, keep, gt_num=3, ndcg_k=5)
    for i, (lo, hi) in enumerate([(0, 7), (7, 40), (40, 41), (41, 90)]):
        acc = streamed if i % 2 == 0 else other
        acc.update([s[lo:hi] for s in logits], label[lo:hi], mask[lo:hi])
    streamed.merge(other.state())  # as an all-reduce across two ranks would
    a, b = whole.compute(), streamed.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    expected_keys = {"joint_recall", "requests"} | {
        f"{m}/{s}" for m in ("stage_recall", "ndcg@5", "kendall_tau") for s in stage_names
    }
    assert set(a) == expected_keys
    # Means of the per-request functions, over non-empty requests (tau: where defined).
    nonempty = mask.any(-1)
    assert a["requests"] == 90.0 and int(nonempty.sum()) < 90  # empty requests exist and are counted
    assert a["joint_recall"] == pytest.approx(joint_recall(logits, label, mask, keep, 3)[nonempty].mean().item())
    for s, name, k in zip(logits, stage_names, keep):
        assert a[f"stage_recall/{name}"] == pytest.approx(stage_recall(s, label, mask, k, 3)[nonempty].mean().item())
        assert a[f"ndcg@5/{name}"] == pytest.approx(ndcg_at_k(s, label, mask, 5)[nonempty].mean().item())
        assert a[f"kendall_tau/{name}"] == pytest.approx(np.nanmean(kendall_tau(s, label, mask).numpy()))


def test_state_is_a_reducible_vector_and_reset_clears_it():
    logits, label, mask = random_inputs(1, stages=2)
    m = CascadeMetrics(["retrieval", "prerank"], [6, 4], gt_num=3)
    m.update(logits, label, mask)
    st = m.state()
    assert st.dtype == torch.float64 and st.dim() == 1 and len(st) == len(m.state_names)
    st.zero_()  # a copy: the accumulator is untouched
    assert m.compute()["requests"] == 120.0
    m.reset()
    assert m.compute()["requests"] == 0.0 and math.isnan(m.compute()["joint_recall"])
    m.all_reduce()  # no process group: a no-op
    with pytest.raises(ValueError, match="shape"):
        m.merge(torch.zeros(3))


def test_metrics_reject_bad_inputs():
    logits, label, mask = random_inputs(0, stages=2)
    with pytest.raises(ValueError, match="2 stage names"):
        CascadeMetrics(["a", "b"], [5], gt_num=3)
    with pytest.raises(ValueError, match="strictly decrease"):
        CascadeMetrics(["a", "b"], [5, 5], gt_num=3)
    with pytest.raises(ValueError, match="gt_num"):
        joint_recall(logits, label, mask, [6, 4], 0)
    m = CascadeMetrics(["a", "b"], [6, 4], gt_num=3)
    with pytest.raises(ValueError, match="stages"):
        m.update(logits[:1], label, mask)
    with pytest.raises(TypeError, match="bool"):
        m.update(logits, label, mask.float())
    with pytest.raises(ValueError, match="does not match"):
        m.update([s[:, :5] for s in logits], label, mask)
    nan = [torch.full_like(logits[0], float("nan")), logits[1]]
    with pytest.raises(ValueError, match="NaN"):
        m.update(nan, label, torch.ones_like(mask))
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau(logits[0], torch.full_like(label, float("nan")), torch.ones_like(mask))
    assert m.compute()["requests"] == 0.0  # nothing partial was accumulated

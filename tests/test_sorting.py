"""Tests of the masked relaxed sorting operators (NeuralSort, SoftSort, hard sort, soft top-k membership).

Reference values come from independent numpy/scipy transcriptions of the papers' formulas:
Grover et al. 2019 (NeuralSort, eq. 5) and Prillo & Eisenschlos 2020 (SoftSort, eq. 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from cascade_ranking.sorting import hard_sort, neural_sort, soft_sort, soft_topk_membership

SOFT_OPS = {
    "neural_sort": lambda s, tau, mask=None: neural_sort(s, tau=tau, mask=mask),
    "soft_sort_p1": lambda s, tau, mask=None: soft_sort(s, tau=tau, mask=mask, power=1.0),
    "soft_sort_p2": lambda s, tau, mask=None: soft_sort(s, tau=tau, mask=mask, power=2.0),
}
ops = pytest.mark.parametrize("op", list(SOFT_OPS), ids=list(SOFT_OPS))


def _distinct_scores(b: int, n: int, seed: int, gap: float = 0.3) -> torch.Tensor:
    """``[b, n]`` float64 scores whose pairwise gaps are at least ``gap`` (no ties), in random order."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n, dtype=torch.float64) * gap
    jitter = torch.rand(b, n, generator=g, dtype=torch.float64) * gap * 0.3
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    return (base + jitter - base.mean()).gather(1, perm)


def _partial_mask() -> torch.Tensor:
    return torch.tensor(
        [
            [True, False, True, True, False, True],
            [True, True, True, True, True, True],
            [False, True, False, False, True, False],
        ]
    )


# ----------------------------------------------------------------------------------------------- references
def _np_neuralsort(s: np.ndarray, tau: float) -> np.ndarray:
    """Grover et al. 2019, eq. 5, one request, descending: P[i] = softmax(((n + 1 - 2i) s - A_s 1) / tau)."""
    n = len(s)
    a_s = np.abs(s[:, None] - s[None, :])
    out = np.empty((n, n))
    for i in range(1, n + 1):  # 1-based row index, as in the paper
        out[i - 1] = softmax(((n + 1 - 2 * i) * s - a_s @ np.ones(n)) / tau)
    return out


def _np_softsort(s: np.ndarray, tau: float, power: float) -> np.ndarray:
    """Prillo & Eisenschlos 2020, eq. 2, descending: P[i, :] = softmax(-|sort(s)_i - s|^power / tau)."""
    srt = np.sort(s)[::-1]
    return np.stack([softmax(-(np.abs(v - s) ** power) / tau) for v in srt])


def _np_hard(s: np.ndarray) -> np.ndarray:
    order = np.argsort(-s, kind="stable")
    return np.eye(len(s))[order]


# ---------------------------------------------------------------------------------------------- gradcheck
@ops
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_gradcheck_float64(op, masked):
    s = _distinct_scores(3, 6, seed=1).requires_grad_()
    mask = _partial_mask() if masked else None
    assert torch.autograd.gradcheck(lambda x: SOFT_OPS[op](x, 0.7, mask), (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradgradcheck_neural_sort():
    s = _distinct_scores(2, 5, seed=2).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: neural_sort(x, tau=1.0, mask=_partial_mask()[:2, :5]), (s,))


# --------------------------------------------------------------------------------------- formula vs paper
def test_neural_sort_matches_grover_eq5():
    s = _distinct_scores(4, 7, seed=3, gap=0.5).numpy() * 3.0
    for tau in (0.1, 1.0, 5.0):
        got = neural_sort(torch.from_numpy(s), tau=tau).numpy()
        for b in range(len(s)):
            np.testing.assert_allclose(got[b], _np_neuralsort(s[b], tau), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_soft_sort_matches_prillo_eq2(power):
    s = _distinct_scores(4, 7, seed=4).numpy()
    for tau in (0.1, 1.0):
        got = soft_sort(torch.from_numpy(s), tau=tau, power=power).numpy()
        for b in range(len(s)):
            np.testing.assert_allclose(got[b], _np_softsort(s[b], tau, power), rtol=1e-10, atol=1e-12)


def test_neural_sort_hand_computed_two_items():
    # n = 2, s = (0, 1), tau = 1: A_s 1 = (1, 1); row 1 = softmax(s - 1); row 2 = softmax(-s - 1)
    p = neural_sort(torch.tensor([[0.0, 1.0]], dtype=torch.float64), tau=1.0)[0]
    e = np.e
    expected = np.array([[1 / (1 + e), e / (1 + e)], [e / (1 + e), 1 / (1 + e)]])
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------------------- hard sort / limit
def test_hard_sort_matches_numpy_argsort_with_ties():
    g = torch.Generator().manual_seed(5)
    s = torch.randint(0, 4, (6, 9), generator=g).to(torch.float64)  # many ties: broken by slot index
    got = hard_sort(s).numpy()
    for b in range(len(s)):
        np.testing.assert_array_equal(got[b], _np_hard(s[b].numpy()))


def test_hard_sort_masked_puts_padded_last():
    s = torch.tensor([[5.0, 100.0, 1.0, 3.0]])
    mask = torch.tensor([[True, False, True, True]])
    got = hard_sort(s, mask=mask)[0]
    expected = torch.zeros(4, 4)
    expected[0, 0], expected[1, 3], expected[2, 2] = 1, 1, 1  # 5 > 3 > 1; row 3 (padded place) is zero
    torch.testing.assert_close(got, expected)


@ops
def test_soft_operators_tend_to_hard_sort(op):
    s = _distinct_scores(5, 8, seed=6, gap=0.5)
    mask = torch.rand(5, 8, generator=torch.Generator().manual_seed(0)) > 0.3
    for m in (None, mask):
        hard = hard_sort(s, mask=m)
        coarse = (SOFT_OPS[op](s, 1.0, m) - hard).abs().max()
        fine = (SOFT_OPS[op](s, 1e-3, m) - hard).abs().max()
        assert fine < 1e-12 < coarse


def test_neural_sort_ties_share_mass_at_small_tau():
    s = torch.tensor([[3.0, 1.0, 3.0, 0.0]], dtype=torch.float64)
    p = neural_sort(s, tau=1e-4)[0]
    expected = torch.tensor([[0.5, 0, 0.5, 0], [0.5, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(p, expected)


# ------------------------------------------------------------------------------------------------ masking
@ops
def test_padded_candidates_sorted_last_and_get_zero_gradient(op):
    s = _distinct_scores(3, 6, seed=7).requires_grad_()
    mask = _partial_mask()
    p = SOFT_OPS[op](s, 0.5, mask)
    n = mask.sum(-1)
    for b in range(3):
        assert torch.all(p[b, n[b] :] == 0), "rows r >= n must be zero"
        assert torch.all(p[b][:, ~mask[b]] == 0), "padded columns must be zero"
    weights = torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype)
    (p * weights).sum().backward()
    assert torch.all(s.grad[~mask] == 0)
    assert torch.all(s.grad[mask] != 0)


@ops
def test_padded_values_never_enter(op):
    s = _distinct_scores(3, 6, seed=8)
    mask = _partial_mask()
    junk = s.clone()
    junk[~mask] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 7.0], dtype=s.dtype)[
        : int((~mask).sum())
    ]
    junk.requires_grad_()
    p = SOFT_OPS[op](junk, 0.5, mask)
    torch.testing.assert_close(p, SOFT_OPS[op](s, 0.5, mask))
    p.sum().backward()
    assert torch.isfinite(junk.grad).all() and torch.all(junk.grad[~mask] == 0)


@ops
def test_masking_equals_deletion(op):
    s = _distinct_scores(3, 6, seed=9)
    mask = _partial_mask()
    p = SOFT_OPS[op](s, 0.8, mask)
    for b in range(3):
        n = int(mask[b].sum())
        alone = SOFT_OPS[op](s[b, mask[b]].unsqueeze(0), 0.8)[0]
        torch.testing.assert_close(p[b, :n][:, mask[b]], alone, rtol=1e-12, atol=1e-14)


@ops
def test_all_masked_request_gives_zeros_and_finite_gradient(op):
    s = _distinct_scores(2, 5, seed=10).requires_grad_()
    mask = torch.tensor([[False] * 5, [True, False, True, True, False]])
    p = SOFT_OPS[op](s, 0.5, mask)
    assert torch.all(p[0] == 0)
    p.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[0] == 0)


@ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_scores_stay_finite(op, dtype):
    s = torch.tensor([[1e4, -1e4, 0.0, 1e4, -1e4, 3.0]], dtype=dtype).requires_grad_()
    mask = torch.tensor([[True, True, True, True, False, True]])
    for m in (None, mask):
        s.grad = None
        for tau in (1e-2, 1.0, 50.0):
            p = SOFT_OPS[op](s, tau, m)
            assert torch.isfinite(p).all()
            (p * torch.arange(36, dtype=dtype).view(1, 6, 6)).sum().backward()
            assert torch.isfinite(s.grad).all()


@ops
def test_rows_stochastic_over_valid_columns(op):
    s = _distinct_scores(3, 6, seed=11)
    mask = _partial_mask()
    p = SOFT_OPS[op](s, 2.0, mask)
    n = mask.sum(-1)
    rows = p.sum(-1)
    for b in range(3):
        torch.testing.assert_close(rows[b, : n[b]], torch.ones(int(n[b]), dtype=s.dtype))
        assert torch.all(rows[b, n[b] :] == 0)
    assert torch.all(p >= 0)


@ops
def test_permutation_equivariance(op):
    s = _distinct_scores(3, 6, seed=12)
    mask = _partial_mask()
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    p = SOFT_OPS[op](s, 0.6, mask)
    p_perm = SOFT_OPS[op](s[:, perm], 0.6, mask[:, perm])
    torch.testing.assert_close(p_perm, p[..., perm], rtol=1e-12, atol=1e-14)


# -------------------------------------------------------------------------------------- soft top-k / errors
def test_soft_topk_membership_reference():
    s = _distinct_scores(2, 6, seed=13)
    mask = _partial_mask()[:2]
    p = neural_sort(s, tau=0.5, mask=mask)
    got = soft_topk_membership(p, 2)
    pn = p.numpy()
    expected = pn[:, :2].sum(1) / (pn.sum(1) + 1e-6)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert torch.all(got[~mask] == 0)
    # hard limit: exactly the top-2 valid candidates (up to eps)
    hard = soft_topk_membership(hard_sort(s, mask=mask), 2)
    top2 = torch.zeros_like(s)
    for b in range(2):
        idx = torch.where(mask[b])[0]
        top2[b, idx[s[b, idx].argsort(descending=True)[:2]]] = 1
    torch.testing.assert_close(hard, top2, atol=1e-5, rtol=0)


def test_soft_topk_membership_column_sum_is_detached():
    s = _distinct_scores(1, 5, seed=14).requires_grad_()
    soft_topk_membership(neural_sort(s, tau=1.0), 2).sum().backward()
    p = neural_sort(s, tau=1.0)
    expected = torch.autograd.grad((p[:, :2].sum(-2) / (p.detach().sum(-2) + 1e-6)).sum(), s, retain_graph=True)[0]
    undetached = torch.autograd.grad((p[:, :2].sum(-2) / (p.sum(-2) + 1e-6)).sum(), s)[0]
    torch.testing.assert_close(s.grad, expected)
    assert not torch.allclose(s.grad, undetached)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scores": torch.zeros(3)}, ValueError, "scores must be"),
        ({"scores": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, "mask shape"),
        ({"mask": torch.ones(2, 3)}, TypeError, "mask must be bool"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {"scores": torch.zeros(2, 3), "tau": 1.0, "mask": None} | kwargs
    for fn in (neural_sort, soft_sort):
        with pytest.raises(error, match=match):
            fn(args["scores"], tau=args["tau"], mask=args["mask"])


def test_soft_sort_rejects_bad_power():
    with pytest.raises(ValueError, match="power"):
        soft_sort(torch.zeros(1, 3), tau=1.0, power=0.0)

"""Tests of the relaxed top-k operators behind :mod:`cascade_ranking.operators` (one interface, a registry).

References are independent numpy/scipy float64 transcriptions of each paper's formula, one request at a time:

* NeuralSort (Grover et al. 2019, eq. 5) / SoftSort (Prillo & Eisenschlos 2020, eq. 2): top-k rows of the
  matrix over its column sum (LCRON's membership);
* DFTopK (Zhu et al. 2025): sigmoid((s - theta) / tau), theta = mean of the k-th and (k+1)-th largest (np.sort);
* LapSum (Struski et al. 2025): F(s / alpha - b) with sum_j F(s_j / alpha - b) = k, b by bisection;
* sparse top-k (Sander et al. 2023): (s - v_{sigma^-1}) / tau, v = decreasing isotonic regression of
  sort(s) - tau * w (scipy.optimize.isotonic_regression), w = k ones then zeros.

Gradients are checked against the analytic Jacobian (DFTopK) or central differences of the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import isotonic_regression
from scipy.special import expit, softmax

from cascade_ranking import operators
from cascade_ranking.operators import hard_topk
from conftest import distinct_scores

ALL = operators.available()
SUM_TO_K = ("lapsum", "sparse_topk")  # memberships sum to exactly min(k, n)
each = pytest.mark.parametrize("name", ALL)


# ----------------------------------------------------------------------------------------------- references
def _np_perm_parts(s: np.ndarray, k: int, tau: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(top-k rows' mass, column sum + 1e-6) of the permutation matrix, per candidate."""
    n = len(s)
    if kind == "neuralsort":
        a = np.abs(s[:, None] - s[None, :]).sum(1)
        p = np.stack([softmax(((n + 1 - 2 * i) * s - a) / tau) for i in range(1, n + 1)])
    else:
        p = np.stack([softmax(-np.abs(v - s) / tau) for v in np.sort(s)[::-1]])
    return p[:k].sum(0), p.sum(0) + 1e-6


def _np_perm_membership(s: np.ndarray, k: int, tau: float, kind: str) -> np.ndarray:
    top, col = _np_perm_parts(s, k, tau, kind)
    return top / col


def _np_dftopk(s: np.ndarray, k: int, tau: float) -> np.ndarray:
    if k >= len(s):
        return np.ones_like(s)
    desc = np.sort(s)[::-1]
    return expit((s - 0.5 * (desc[k - 1] + desc[k])) / tau)


def _laplace_cdf(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0, 0.5 * np.exp(np.minimum(x, 0)), 1 - 0.5 * np.exp(-np.maximum(x, 0)))


def _np_lapsum(s: np.ndarray, k: int, tau: float) -> np.ndarray:
    if k >= len(s):
        return np.ones_like(s)
    z = s / tau
    lo, hi = z.min() - 50.0, z.max() + 50.0  # sum_j F(z_j - b) decreases from n to 0 in b
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _laplace_cdf(z - mid).sum() > k else (lo, mid)
    return _laplace_cdf(z - 0.5 * (lo + hi))


def _np_sparse(s: np.ndarray, k: int, tau: float) -> np.ndarray:
    if k >= len(s):
        return np.ones_like(s)
    order = np.argsort(-s, kind="stable")
    srt = s[order]
    w = (np.arange(len(s)) < k).astype(float)
    v = isotonic_regression(srt - tau * w, increasing=False).x
    out = np.empty_like(s)
    out[order] = (srt - v) / tau
    return out


REFERENCE = {
    "neuralsort": lambda s, k, tau: _np_perm_membership(s, k, tau, "neuralsort"),
    "softsort": lambda s, k, tau: _np_perm_membership(s, k, tau, "softsort"),
    "dftopk": _np_dftopk,
    "lapsum": _np_lapsum,
    "sparse_topk": _np_sparse,
}


def _reference(
    name: str, s: torch.Tensor, k: int, tau: float, mask: torch.Tensor, at: torch.Tensor | None = None
) -> np.ndarray:
    """The reference membership per request; with ``at``, permutation operators divide by the column sum
    taken at ``at`` (held fixed: the stop-gradient of LCRON's normalisation, for finite differences)."""
    out = np.zeros(s.shape)
    for b in range(s.shape[0]):
        valid = mask[b].numpy()
        if valid.any() and k > 0:
            row = s[b].numpy()[valid]
            if at is not None and name in ("neuralsort", "softsort"):
                out[b, valid] = (
                    _np_perm_parts(row, k, tau, name)[0] / _np_perm_parts(at[b].numpy()[valid], k, tau, name)[1]
                )
            else:
                out[b, valid] = REFERENCE[name](row, k, tau)
    return out


def _scores(b: int = 4, n: int = 9, seed: int = 0, gap: float = 0.25) -> torch.Tensor:
    """float64 scores with pairwise gaps >= ``gap`` (no ties), random order."""
    return distinct_scores(b, n, seed, gap)


def _mask() -> torch.Tensor:
    m = torch.ones(4, 9, dtype=torch.bool)
    m[1, [0, 4, 7]] = False
    m[2, :6] = False  # 3 valid: k >= n for k = 3, 4
    m[3, 2] = False
    return m


# ------------------------------------------------------------------------------------------- value and gradient
@each
@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_matches_the_numpy_reference(name, k, tau):
    s, mask = _scores(), _mask()
    got = operators.soft_topk(s, k, tau=tau, mask=mask, operator=name)
    np.testing.assert_allclose(got.numpy(), _reference(name, s, k, tau, mask), rtol=1e-7, atol=1e-9)


@each
def test_gradient_matches_central_differences_of_the_reference(name):
    s, mask, k, tau, h = _scores(seed=3), _mask(), 3, 0.7, 1e-6
    v = torch.randn(s.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = s.clone().requires_grad_(True)
    (operators.soft_topk(x, k, tau=tau, mask=mask, operator=name) * v).sum().backward()
    want = np.zeros(s.shape)
    for b in range(s.shape[0]):
        for j in range(s.shape[1]):
            e = torch.zeros_like(s)
            e[b, j] = h
            plus, minus = _reference(name, s + e, k, tau, mask, at=s), _reference(name, s - e, k, tau, mask, at=s)
            want[b, j] = ((plus - minus) * v.numpy()).sum() / (2 * h)
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5, atol=1e-7)
    assert (x.grad[~mask] == 0).all()


def test_dftopk_gradient_is_the_analytic_jacobian():
    """d f_j / d s_i = sigma'(z_j) / tau * (delta_ij - [i = k-th] / 2 - [i = (k+1)-th] / 2) (theta differentiable)."""
    s, k, tau = _scores(b=1, n=7, seed=5)[0], 2, 0.5
    desc = np.argsort(-s.numpy())
    z = (s.numpy() - 0.5 * (s.numpy()[desc[k - 1]] + s.numpy()[desc[k]])) / tau
    d = expit(z) * (1 - expit(z)) / tau
    jac = np.diag(d)
    jac[:, desc[k - 1]] -= 0.5 * d
    jac[:, desc[k]] -= 0.5 * d
    got = torch.autograd.functional.jacobian(lambda x: operators.dftopk(x[None], k, tau=tau)[0], s)
    np.testing.assert_allclose(got.numpy(), jac, rtol=1e-10, atol=1e-12)


@each
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(name, masked):
    s = _scores(b=3, n=6, seed=7).requires_grad_(True)
    mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(2)) > 0.3 if masked else None
    op = operators.get(name)
    if op.matrix is not None:  # the membership detaches its normaliser on purpose: check the matrix itself
        assert torch.autograd.gradcheck(lambda x: op.matrix(x, tau=0.8, mask=mask), (s,))
    else:
        assert torch.autograd.gradcheck(lambda x: op.soft_topk(x, 2, tau=0.8, mask=mask), (s,))


# ------------------------------------------------------------------------------------------------ properties
@each
def test_hard_limit_is_torch_topk(name):
    s, mask = _scores(b=4, n=30, seed=11, gap=0.1), _mask().repeat(1, 4)[:, :30]
    for k in (1, 5, 10):
        got = operators.soft_topk(s, k, tau=1e-4, mask=mask, operator=name)
        torch.testing.assert_close(got, hard_topk(s, k, mask=mask), atol=1e-5, rtol=0)
    unmasked = torch.zeros_like(s).scatter_(1, torch.topk(s, 7).indices, 1.0)
    torch.testing.assert_close(operators.soft_topk(s, 7, tau=1e-4, operator=name), unmasked, atol=1e-5, rtol=0)


@each
def test_masking_equals_deletion_and_padded_scores_get_zero_gradient(name):
    s, mask = _scores(), _mask()
    x = s.clone().requires_grad_(True)
    got = operators.soft_topk(x, 3, tau=0.5, mask=mask, operator=name)
    got.pow(2).sum().backward()
    assert (got[~mask] == 0).all() and (x.grad[~mask] == 0).all()
    junk = torch.where(mask, s, torch.full_like(s, 1e6))  # padded values never enter
    torch.testing.assert_close(operators.soft_topk(junk, 3, tau=0.5, mask=mask, operator=name), got.detach())
    row = operators.soft_topk(s[1:2, mask[1]], 3, tau=0.5, operator=name)  # request 1, padded slots deleted
    torch.testing.assert_close(got.detach()[1, mask[1]], row[0])


@each
def test_permutation_equivariance_and_ties_share(name):
    s = torch.tensor([[2.0, 1.0, 1.0, 0.0, -1.0, 1.0]], dtype=torch.float64)  # three tied at 1.0
    got = operators.soft_topk(s, 2, tau=0.5, operator=name)
    assert torch.allclose(got[0, 1], got[0, 2]) and torch.allclose(got[0, 1], got[0, 5])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(operators.soft_topk(s[:, perm], 2, tau=0.5, operator=name), got[:, perm])


@pytest.mark.parametrize("name", ["dftopk", "lapsum", "sparse_topk"])
def test_ties_at_the_cut_off_share_it_in_the_hard_limit(name):
    s = torch.tensor([[3.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # k = 2: the 2nd place is a tie of two
    want = torch.tensor([[1.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(operators.soft_topk(s, 2, tau=1e-4, operator=name), want, atol=1e-6, rtol=0)


@each
def test_k_at_least_valid_count_keeps_every_valid_candidate_and_k_zero_none(name):
    s, mask = _scores(), _mask()
    x = s.clone().requires_grad_(True)
    for k in (6, 9, 50):  # request 2 has 3 valid candidates; k = 9, 50: every request
        got = operators.soft_topk(x, k, tau=0.5, mask=mask, operator=name)
        assert torch.isfinite(got).all()
        full = mask.sum(-1) <= k
        torch.testing.assert_close(got[full], mask[full].to(s.dtype), atol=1e-5, rtol=0)
    zero = operators.soft_topk(x, 0, tau=0.5, mask=mask, operator=name)
    assert (zero.abs() < 1e-5).all()
    (zero.sum() + operators.soft_topk(x, 50, tau=0.5, mask=mask, operator=name).sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", SUM_TO_K)
def test_memberships_sum_to_k(name):
    s, mask = _scores(b=4, n=40, seed=4, gap=0.05), torch.rand(4, 40, generator=torch.Generator().manual_seed(0)) > 0.3
    got = operators.soft_topk(s, 10, tau=0.3, mask=mask, operator=name)
    torch.testing.assert_close(got.sum(-1), torch.full((4,), 10.0, dtype=torch.float64))
    assert ((got >= 0) & (got <= 1)).all()


@each
def test_all_masked_request_gives_zeros_and_finite_gradient(name):
    s = _scores(b=2, n=5).requires_grad_(True)
    mask = torch.tensor([[False] * 5, [True] * 5])
    got = operators.soft_topk(s, 2, tau=0.5, mask=mask, operator=name)
    got.sum().backward()
    assert (got[0] == 0).all() and torch.isfinite(s.grad).all() and (s.grad[0] == 0).all()


@each
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_scores_stay_finite(name, dtype):
    s = (torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 1e4).to(dtype).requires_grad_(True)
    got = operators.soft_topk(s, 10, tau=1.0, operator=name)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(s.grad).all()


@each
def test_log_split_matches_log_of_split(name):
    s, mask = _scores(), _mask()
    op = operators.get(name)
    inside, outside = op.split(s, 3, tau=0.5, mask=mask)
    log_in, log_out = op.log_split(s, 3, tau=0.5, mask=mask)
    torch.testing.assert_close(log_in[mask], inside[mask].log().clamp_min(-100.0))
    torch.testing.assert_close(log_out[mask], outside[mask].log().clamp_min(-100.0))


def test_registry_lists_permutation_operators_with_their_matrix():
    assert [n for n in ALL if operators.get(n).is_permutation] == ["neuralsort", "softsort"]
    s = _scores()
    assert operators.get("neuralsort").matrix(s, tau=1.0).shape == (4, 9, 9)
    assert all(operators.get(n).complexity and operators.get(n).reference for n in ALL)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"operator": "bitonic"}, ValueError, "unknown top-k operator 'bitonic'; known operators: neuralsort"),
        ({"k": -1}, ValueError, "k must be an integer >= 0"),
        ({"k": 1.5}, ValueError, "k must be an integer >= 0"),
        ({"tau": 0.0}, ValueError, "tau must be positive"),
        ({"scores": torch.zeros(3)}, ValueError, r"scores must be \[B, N\]"),
        ({"scores": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating point"),
        ({"mask": torch.ones(2, 3)}, TypeError, "mask must be bool"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_input_raises(name, kwargs, error, match):
    args = {"scores": torch.zeros(2, 3), "k": 1, "tau": 1.0, "mask": None, "operator": name, **kwargs}
    with pytest.raises(error, match=match):
        operators.soft_topk(args.pop("scores"), args.pop("k"), **args)

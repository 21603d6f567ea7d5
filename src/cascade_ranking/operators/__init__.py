"""Relaxed top-k and sorting operators behind one interface and a registry.

Every operator maps scores ``[B, N]`` (float, higher = better) to a soft top-``k`` membership ``[B, N]`` in
``[0, 1]``: ``soft_topk(scores, k, *, tau, mask=None)``. Masked candidates (``mask`` False) are deleted:
membership exactly 0 and zero gradient, the result equal to the operator on the valid candidates alone.
Permutation operators (NeuralSort, SoftSort) also expose their ``[B, N, N]`` relaxed permutation matrix
(:attr:`TopKOperator.matrix`); their membership is LCRON's column-normalised top-``k`` mass.

>>> from cascade_ranking import operators
>>> op = operators.get("dftopk")
>>> member = op.soft_topk(scores, 10, tau=1.0, mask=mask)  # doctest: +SKIP

========== =================================== ============ ==========================================
name       paper                               time/request  memory/request
========== =================================== ============ ==========================================
neuralsort Grover et al., ICLR 2019, eq. 5      O(N^2)       O(N^2)
softsort   Prillo & Eisenschlos, ICML 2020      O(N^2)       O(N^2)
dftopk     Zhu et al., arXiv 2510.11472, 2025   O(N)         O(N)
lapsum     Struski et al., ICML 2025            O(N log N)   O(N)
sparse_topk Sander et al., ICML 2023            O(N log N)   O(N)
========== =================================== ============ ==========================================

To add an operator: write ``operators/<name>.py`` with a function ``f(scores, k, *, tau, mask=None)`` (its
docstring cites the paper and equation and states its complexity), add one :class:`TopKOperator` line to
:data:`REGISTRY`, and add it to the parametrised lists of ``tests/test_operators.py`` with a numpy reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._common import hard_sort, hard_topk, soft_topk_membership, split_column_sums
from .dftopk import dftopk, dftopk_logits
from .lapsum import lapsum_topk
from .neuralsort import neural_sort, neuralsort_topk, pairwise_abs_sum
from .softsort import soft_sort, softsort_topk
from .sparse_topk import sparse_topk

__all__ = [
    "TopKOperator",
    "REGISTRY",
    "LOG_FLOOR",
    "available",
    "get",
    "soft_topk",
    "log1mexp",
    "neural_sort",
    "soft_sort",
    "hard_sort",
    "hard_topk",
    "pairwise_abs_sum",
    "split_column_sums",
    "soft_topk_membership",
    "neuralsort_topk",
    "softsort_topk",
    "dftopk",
    "dftopk_logits",
    "lapsum_topk",
    "sparse_topk",
]

#: the floor of every log taken by :meth:`TopKOperator.log_split` (as ``torch.nn.BCELoss``).
LOG_FLOOR = -100.0


@dataclass(frozen=True)
class TopKOperator:
    """One relaxed top-``k`` operator: its membership function and what it costs.

    Attributes:
        name: the registry name (``--set loss.operator=<name>``).
        membership: ``(scores [B, N], k, *, tau, mask) -> [B, N]`` soft top-``k`` membership in ``[0, 1]``.
        complexity: time and memory per request, e.g. ``"O(N log N) time, O(N) memory"``.
        reference: the paper.
        matrix: permutation operators only: ``(scores, *, tau, mask) -> [B, N, N]`` (rows = places,
            descending; see :func:`neural_sort`).
        logits: sigmoid-form operators only: ``(scores, k, *, tau, mask) -> [B, N]`` with
            ``membership = sigmoid(logits)`` (exact logs for BCE).
    """

    name: str
    membership: Callable[..., torch.Tensor]
    complexity: str
    reference: str
    matrix: Callable[..., torch.Tensor] | None = None
    logits: Callable[..., torch.Tensor] | None = None

    @property
    def is_permutation(self) -> bool:
        """Whether the operator builds a relaxed permutation matrix (:attr:`matrix`)."""
        return self.matrix is not None

    def soft_topk(self, scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Soft top-``k`` membership ``[B, N]`` in ``[0, 1]`` (0 at masked candidates); see :attr:`membership`."""
        return self.membership(scores, k, tau=tau, mask=mask)

    def split(
        self, scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None, eps: float = 1e-6
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inside, outside)``, ``[B, N]`` each: top-``k`` membership and its complement (0 at masked slots).

        Permutation operators: LCRON's column-normalised masses of the top ``k`` places and of the places
        below (:func:`soft_topk_membership`, ``eps`` as released), two gradient paths; the others:
        ``inside = membership``, ``outside = 1 - inside``.
        """
        if self.matrix is not None:
            return soft_topk_membership(self.matrix(scores, tau=tau, mask=mask), k, eps=eps)
        inside = self.soft_topk(scores, k, tau=tau, mask=mask)
        valid = torch.ones_like(inside, dtype=torch.bool) if mask is None else mask
        return inside, torch.where(valid, 1.0 - inside, torch.zeros_like(inside))

    def log_split(
        self, scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log inside, log outside)`` ``[B, N]``, each floored at -100 (as ``torch.nn.BCELoss``).

        Sigmoid-form operators take them from the logits (``logsigmoid``, exact where the sigmoid rounds to
        0 or 1); the others as ``log`` of :meth:`split` (``eps`` 1e-6). Values at masked slots are
        meaningless (weight them 0).
        """
        if self.logits is not None:
            z = self.logits(scores, k, tau=tau, mask=mask)
            logs = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
        else:  # below the smallest normal number the log is floored anyway: no 0 * inf gradient at exact 0
            tiny = torch.finfo(scores.dtype).tiny
            inside, outside = self.split(scores, k, tau=tau, mask=mask)
            logs = torch.log(inside.clamp_min(tiny)), torch.log(outside.clamp_min(tiny))
        return logs[0].clamp_min(LOG_FLOOR), logs[1].clamp_min(LOG_FLOOR)


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p [...] <= 0``, accurate at both ends, floored at -100, never NaN.

    ``log(-expm1(x))`` near 0 and ``log1p(-exp(x))`` below ``-log 2`` (Maechler 2012); ``log_p`` is capped
    at ``-tiny`` so that ``log_p = 0`` (``p = 1``) gives the floor with zero gradient instead of ``0 * inf``.
    """
    x = log_p.clamp_max(-torch.finfo(log_p.dtype).tiny)
    near = torch.log(-torch.expm1(x.clamp_min(-0.6931471805599453)))
    far = torch.log1p(-torch.exp(x.clamp_max(-0.6931471805599453)))
    return torch.where(x > -0.6931471805599453, near, far).clamp_min(LOG_FLOOR)


def _matrix_of(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda scores, *, tau, mask=None: fn(scores, tau=tau, mask=mask)


#: operator name -> :class:`TopKOperator` (add a line here to add an operator).
REGISTRY: dict[str, TopKOperator] = {
    "neuralsort": TopKOperator(
        "neuralsort",
        neuralsort_topk,
        "O(N^2) time, O(N^2) memory",
        "Grover et al., ICLR 2019, eq. 5",
        matrix=_matrix_of(neural_sort),
    ),
    "softsort": TopKOperator(
        "softsort",
        softsort_topk,
        "O(N^2) time, O(N^2) memory",
        "Prillo & Eisenschlos, ICML 2020, eq. 2",
        matrix=_matrix_of(soft_sort),
    ),
    "dftopk": TopKOperator(
        "dftopk", dftopk, "O(N) time, O(N) memory", "Zhu et al., arXiv 2510.11472, 2025", logits=dftopk_logits
    ),
    "lapsum": TopKOperator("lapsum", lapsum_topk, "O(N log N) time, O(N) memory", "Struski et al., ICML 2025"),
    "sparse_topk": TopKOperator("sparse_topk", sparse_topk, "O(N log N) time, O(N) memory", "Sander et al., ICML 2023"),
}


def available() -> list[str]:
    """Names of the registered operators, in registry order."""
    return list(REGISTRY)


def get(name: str) -> TopKOperator:
    """The operator registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown top-k operator {name!r}; known operators: {', '.join(REGISTRY)}") from None


def soft_topk(
    scores: torch.Tensor, k: int, *, tau: float, mask: torch.Tensor | None = None, operator: str = "dftopk"
) -> torch.Tensor:
    """Soft top-``k`` membership ``[B, N]`` of ``scores [B, N]`` by the registered ``operator``.

    Raises:
        ValueError: unknown operator, bad shapes, ``tau <= 0`` or ``k`` not an integer ``>= 0``.
        TypeError: non-float scores or a non-bool mask.
    """
    return get(operator).soft_topk(scores, k, tau=tau, mask=mask)

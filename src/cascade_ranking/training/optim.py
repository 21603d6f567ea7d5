"""The training optimizer: Adam (Kingma & Ba, ICLR 2015, Algorithm 1), as the LCRON protocol prescribes.

Wang et al. (ICML 2025, Sec. 5.1) train every stage model and the loss's learnable weights with Adam at
learning rate 0.01. :func:`adam` builds ``torch.optim.Adam`` with its single-pass (``fused``) kernel wherever
torch has one for every parameter (CPU and CUDA floating-point tensors): the same update rule and defaults
(betas 0.9/0.999, eps 1e-8, no weight decay), in one pass over each parameter, its gradient and its two moments
instead of the several passes of the default multi-tensor (``foreach``) implementation. A training step's
parameters are dominated by dense embedding tables (every row is updated every step, since Adam's moments
decay), so the optimizer is memory-bound: on a 2-core CPU the fused step is several times faster
(``benchmarks/run.py``; README, performance). The two agree to floating-point rounding
(``tests/test_perf_equivalence.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["adam", "fused_supported"]

_FUSED_DEVICES = ("cpu", "cuda")


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether ``torch.optim.Adam(..., fused=True)`` accepts ``params``.

    Args:
        params: the tensors to optimize; fused needs them floating point (any shape), all on one CPU or CUDA
            device type, not sparse.
    """
    if not params:
        return False
    kinds = {p.device.type for p in params}
    return (
        len(kinds) == 1
        and kinds <= set(_FUSED_DEVICES)
        and all(torch.is_floating_point(p) and not p.is_sparse for p in params)
    )


def adam(params: Iterable[torch.Tensor], lr: float, *, fused: bool | None = None) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr=lr)``, fused where supported (``fused=None``), or as ``fused`` says.

    Args:
        params: the parameters (any shapes; floating point for the fused kernel).
        lr: the learning rate (0.01 in the LCRON protocol).
        fused: force the fused kernel on (``True``) or off (``False``); ``None`` = wherever supported.

    Raises:
        ValueError: an empty parameter list (as ``torch.optim.Adam``), or ``fused=True`` for parameters the
            fused kernel does not take.
    """
    params = list(params)
    use = fused_supported(params) if fused is None else fused
    if use and not fused_supported(params):
        raise ValueError("fused Adam needs floating-point parameters on one CPU or CUDA device type")
    return torch.optim.Adam(params, lr=lr, fused=True) if use else torch.optim.Adam(params, lr=lr)

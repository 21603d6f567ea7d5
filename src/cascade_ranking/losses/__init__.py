"""Cascade losses: LCRON and its baselines behind one registry and one calling convention.

>>> from cascade_ranking import losses
>>> loss_fn = losses.build("lcron", keep=[30, 20], gt_num=10)
>>> out = loss_fn([retrieval_logits, prerank_logits], label=label, mask=mask, stage=stage)  # doctest: +SKIP
>>> out.loss.backward()  # doctest: +SKIP

See :mod:`cascade_ranking.losses.base` for shapes and the reduction contract. Each method lives in its own
module, citing its paper; the registry below maps a method name to ``module:Class`` and imports lazily.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..types import CascadeLoss, LossOutput, check_keep, positive_int

__all__ = ["build", "available", "hyperparameters", "CascadeLoss", "LossOutput", "REGISTRY", "CASCADE_METHODS"]

#: The benchmark's default methods: the LCRON paper's eight (Wang et al. 2025, Tables 2-3) and DFTopK (Zhu et al. 2025).
CASCADE_METHODS = ("bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron", "dftopk")

#: method name -> "module:Class" (explicit; add a line here to add a method).
REGISTRY: dict[str, str] = {
    "lcron": "cascade_ranking.losses.lcron:LCRONLoss",
    "bce": "cascade_ranking.losses.bce:BCELoss",
    "icc": "cascade_ranking.losses.icc:ICCLoss",
    "rankflow": "cascade_ranking.losses.rankflow:RankFlowLoss",
    "fs_ranknet": "cascade_ranking.losses.fs_ranknet:FSRankNetLoss",
    "fs_lambdaloss": "cascade_ranking.losses.fs_lambdaloss:FSLambdaLoss",
    "arf": "cascade_ranking.losses.arf:ARFLoss",
    "arf_v2": "cascade_ranking.losses.arf:ARFv2Loss",
    "dftopk": "cascade_ranking.losses.dftopk:DFTopKLoss",
    "ranktower": "cascade_ranking.losses.ranktower:RankTowerLoss",
    "ranktower_distill": "cascade_ranking.losses.ranktower:RankTowerDistillLoss",
    "ranktower_sort": "cascade_ranking.losses.ranktower:RankTowerSortLoss",
    "rankmax": "cascade_ranking.losses.ranktower:RankmaxLoss",
    "am_rankmax": "cascade_ranking.losses.ranktower:AMRankmaxLoss",
    "softmax": "cascade_ranking.losses.prerank_ltr:SoftmaxLoss",
    "approx_ndcg": "cascade_ranking.losses.prerank_ltr:ApproxNDCGLoss",
    "ranknet": "cascade_ranking.losses.prerank_ltr:RankNetLoss",
}


def available() -> list[str]:
    """Names of the registered methods whose module is importable, in registry order."""
    out = []
    for name, target in REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def hyperparameters(name: str, **hyper) -> dict[str, Any]:
    """Every hyper-parameter of method ``name`` as it will be used: its documented defaults updated by ``hyper``.

    Values are made JSON-friendly (tuples become lists). What a run records, so that a default changed in a
    later release cannot silently change what an old run folder means.

    Raises:
        ValueError: unknown method.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    out: dict[str, Any] = {}
    for param in inspect.signature(cls).parameters.values():
        if param.name in ("keep", "gt_num") or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if param.default is not inspect.Parameter.empty:
            out[param.name] = param.default
    out.update(hyper)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def build(name: str, *, keep: Sequence[int], gt_num: int = 10, **hyper) -> nn.Module:
    """Build the loss module of method ``name`` for a cascade with ``len(keep)`` stages.

    Args:
        name: a registered method (see :func:`available`).
        keep: number of candidates each stage keeps, retrieval first (e.g. ``[30, 20]``).
        gt_num: number of ground-truth candidates (top ``gt_num`` by label).
        **hyper: method hyper-parameters (each method documents its own and their defaults).

    Returns:
        the loss, an ``nn.Module`` following :class:`CascadeLoss`: ``loss_fn(logits, label=, mask=, stage=)``
        with one ``[B, N]`` logits tensor per stage returns a :class:`LossOutput`; its parameters (learnable
        loss weights, if any) train with the models.

    Raises:
        ValueError: unknown method (the message lists the known ones) or invalid ``keep``/``gt_num``.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)}")
    keep = check_keep(keep, what=f"{name}: keep")
    positive_int(gt_num, f"{name}: gt_num")
    module_name, cls_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"method {name!r} is registered but not installed ({exc})") from exc
    cls = getattr(module, cls_name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n in params if n not in ("keep", "gt_num")]
        unknown = sorted(set(hyper) - set(known))
        if unknown:
            raise ValueError(f"{name}: unknown hyper-parameter(s) {unknown}; known: {known}")
    try:
        return cls(keep=keep, gt_num=gt_num, **hyper)
    except TypeError as exc:  # e.g. a string where a number is expected
        raise ValueError(f"{name}: invalid hyper-parameters {hyper}: {exc}") from None

"""The contracts every layer shares: the typed request batch, the loss output and calling convention, the
stage-model protocol, stage names and the one validation of cascade keep sizes.

This module is the lowest layer (see the README's architecture section): it imports nothing of the package and
does not import torch when it is imported (tensors appear in annotations only; the batch's methods import torch
when called), so the torch-free on-disk format (:mod:`cascade_ranking.data.schema`) can use :func:`check_keep`.

Calling conventions (keyword tensors everywhere):

* a loss: ``loss_fn(logits, *, label, mask, stage, soft_label=None) -> LossOutput`` with ``logits`` one
  ``[B, N]`` float tensor per stage, retrieval first (:class:`CascadeLoss`);
* a metric: ``metric(logits, *, label, mask, ...)`` with ``logits`` ``[B, N]`` (one stage) or the list of
  every stage's (:mod:`cascade_ranking.metrics`);
* a stage model: ``model(batch) -> [B, N]`` scores (:class:`StageModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "STAGE_NAMES",
    "CascadeLoss",
    "LossOutput",
    "RequestBatch",
    "StageModel",
    "check_keep",
    "positive_int",
    "stage_names",
]

#: Stage names by number of stages, retrieval first (see :func:`stage_names` for longer cascades).
STAGE_NAMES = {1: ["retrieval"], 2: ["retrieval", "prerank"], 3: ["retrieval", "prerank", "rank"]}


def stage_names(num_stages: int) -> list[str]:
    """``["retrieval", "prerank", "rank"]`` for 3 stages; ``stage_<i>`` names between retrieval and rank beyond."""
    if num_stages in STAGE_NAMES:
        return list(STAGE_NAMES[num_stages])
    return ["retrieval"] + [f"stage_{i}" for i in range(1, num_stages - 1)] + ["rank"]


def check_keep(
    keep: Sequence[int],
    *,
    gt_num: int | None = None,
    num_candidates: int | None = None,
    what: str = "keep",
) -> tuple[int, ...]:
    """The one validation of cascade keep sizes: ``num_candidates >= keep[0] > keep[1] > ... >= gt_num > 0``.

    Args:
        keep: candidates each stage keeps, retrieval first.
        gt_num: the ground-truth size; when given it must be a positive integer and the last stage must keep at
            least that many (otherwise joint recall could never reach 1).
        num_candidates: N, candidate slots per request; when given the first stage cannot keep more.
        what: how errors name ``keep`` (e.g. ``"lcron: keep"`` or ``"schema.json 'keep'"``).

    Returns:
        ``keep`` as a tuple of ``int``.

    Raises:
        ValueError: one line naming ``what``: not a sequence, empty, a non-integer or non-positive size, not
            strictly decreasing, ``keep[0] > num_candidates``, ``keep[-1] < gt_num`` or ``gt_num`` not positive.
    """
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise ValueError(f"{what} must be a sequence of integers (one per stage), got {keep!r}")
    sizes = list(keep)
    if not sizes:
        raise ValueError(f"{what}: at least one stage is required")
    if any(isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or k <= 0 for k in sizes):
        raise ValueError(f"{what}={sizes}: keep sizes must be positive integers")
    sizes = [int(k) for k in sizes]
    if num_candidates is not None and sizes[0] > num_candidates:
        raise ValueError(
            f"{what}={sizes}: the first stage cannot keep {sizes[0]} of only {num_candidates} candidates per request"
        )
    if any(b >= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"{what}={sizes}: keep sizes must strictly decrease from stage to stage")
    if gt_num is not None:
        gt_num = positive_int(gt_num, f"{what}: gt_num")
        if sizes[-1] < gt_num:
            raise ValueError(
                f"{what}={sizes}: the last stage keeps {sizes[-1]} < gt_num={gt_num}, "
                "so joint recall could never reach 1"
            )
    return tuple(sizes)


def positive_int(value: object, what: str) -> int:
    """``value`` as an ``int`` when it is a positive whole number (``3`` or ``3.0``, not ``True``).

    Raises:
        ValueError: ``"<what> must be a positive integer, got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class RequestBatch:
    """A batch of B requests with N candidate slots each (typed; no positional tuples).

    Attributes:
        user: user fields, each ``[B]`` int64.
        context: request context fields (weekday, hour, …), each ``[B]`` int64.
        history: history fields, each ``[B, L]`` int64 (0 = padding).
        history_mask: ``[B, L]`` bool, valid history slots.
        item: candidate item fields, each ``[B, N]`` int64 (0 at padded slots).
        mask: ``[B, N]`` bool, valid candidate slots.
        stage: ``[B, N]`` int64 funnel position (0 = filtered first; padded slots hold 0).
        label: ``[B, N]`` float32 graded relevance, higher is better (padded slots hold 0).
        request_id: ``[B]`` int64.
        soft_label: optional ``[B, N]`` float32, a ranking model's prediction (for distillation).
    """

    user: dict[str, torch.Tensor]
    context: dict[str, torch.Tensor]
    history: dict[str, torch.Tensor]
    history_mask: torch.Tensor
    item: dict[str, torch.Tensor]
    mask: torch.Tensor
    stage: torch.Tensor
    label: torch.Tensor
    request_id: torch.Tensor
    soft_label: torch.Tensor | None = field(default=None)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.mask.shape[1])

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RequestBatch:
        """Return a copy with every tensor on ``device`` (``non_blocking`` copies from pinned memory overlap)."""
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> RequestBatch:
        """Return a copy with every tensor in page-locked (pinned) host memory, so that a later
        ``to("cuda", non_blocking=True)`` is an asynchronous copy.

        Raises:
            RuntimeError: no CUDA (or other accelerator) runtime to pin memory with.
        """
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn) -> RequestBatch:
        """A copy with ``fn`` applied to every tensor (those in field dictionaries too)."""

        def apply(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: fn(v) for k, v in x.items()}
            return fn(x)

        return replace(self, **{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice) -> RequestBatch:
        """Return the sub-batch of the given request rows (an index tensor, bool mask or slice)."""
        return self._map(lambda x: x[rows])


@dataclass
class LossOutput:
    """A loss value and its named components.

    Attributes:
        loss: scalar tensor to minimise (0-dim, differentiable).
        parts: name -> detached 0-dim tensor (e.g. ``L_e2e``, ``L_single/retrieval``), for logging only.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class CascadeLoss(Protocol):
    """What ``losses.build`` returns: an ``nn.Module`` (it may own learnable loss weights).

    Called as ``loss_fn(logits, label=label, mask=mask, stage=stage, soft_label=None)`` with ``logits`` one
    ``[B, N]`` float tensor per stage (retrieval first), ``label [B, N]`` float, ``mask [B, N]`` bool, ``stage
    [B, N]`` int64 and the optional ``soft_label [B, N]`` float (a ranking model's prediction; losses that do
    not distil ignore it); returns a :class:`LossOutput`.

    Attributes:
        keep: candidates each stage keeps, retrieval first.
        gt_num: number of ground-truth candidates (top ``gt_num`` by label).
    """

    keep: tuple[int, ...]
    gt_num: int

    def __call__(
        self,
        logits: Sequence[torch.Tensor],
        *,
        label: torch.Tensor,
        mask: torch.Tensor,
        stage: torch.Tensor,
        soft_label: torch.Tensor | None = None,
    ) -> LossOutput: ...


@runtime_checkable
class StageModel(Protocol):
    """A cascade stage's model (an ``nn.Module``): ``model(batch) -> [B, N]`` float scores, higher = better."""

    def __call__(self, batch: RequestBatch) -> torch.Tensor: ...

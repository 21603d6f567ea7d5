"""The state of early stopping on validation (:class:`~.config.EarlyStopping`): checks, best weights, patience.

RankTower (Yan & Li 2023, Sec. 5.1.4) trains every compared model "with early stopping on the validation set";
the paper does not say how often validation runs, so :class:`~.config.EarlyStopping` checks at a fixed interval
of optimizer steps. The training loop (:mod:`.loop`) asks :meth:`EarlyStopper.due` after each step, computes the
validation metric, and hands it to :meth:`EarlyStopper.update`, which keeps a copy of the best weights; at the
end the loop puts the best weights back (:meth:`EarlyStopper.best_weights`). The state travels in the checkpoint
(:meth:`state` / :meth:`from_state`), so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from .config import EarlyStopping

__all__ = ["EarlyStopper"]

log = logging.getLogger(__name__)


@dataclass
class EarlyStopper:
    """Early stopping's running state for one run.

    Attributes:
        settings: the run's :class:`~.config.EarlyStopping`.
        checks: ``[step, value]`` of every check so far (``value`` ``None`` when the metric was not finite).
        best_value, best_step: the best check so far (``-inf`` / 0 before the first).
        bad_checks: checks in a row without an improvement of more than ``min_delta``.
        stopped_at: the step at which patience ran out, ``None`` while training goes on.
        weights: a CPU copy of the model state at the best check (``None`` before the first).
    """

    settings: EarlyStopping
    checks: list[list] = field(default_factory=list)
    best_value: float = -math.inf
    best_step: int = 0
    bad_checks: int = 0
    stopped_at: int | None = None
    weights: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, after its update) is a check step."""
        return step % self.settings.every == 0

    def checked(self, step: int) -> bool:
        """Whether a check already ran at ``step``."""
        return bool(self.checks) and self.checks[-1][0] == step

    def update(self, step: int, value: float, model: torch.nn.Module) -> bool:
        """Record the check at ``step`` with validation ``value``; keep ``model``'s weights when it is the best.

        A non-finite ``value`` (a diverged model) never counts as an improvement. Returns whether training should
        stop now (``patience`` checks in a row without improvement).
        """
        finite = math.isfinite(value)
        self.checks.append([step, value if finite else None])
        if finite and value > self.best_value + self.settings.min_delta:
            self.best_value, self.best_step, self.bad_checks = value, step, 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_checks += 1
            if not finite:
                log.warning("validation %s is %s at step %d", self.settings.metric, value, step)
        if self.bad_checks >= self.settings.patience:
            self.stopped_at = step
            log.info(
                "early stopping at step %d: no %s gain over %.6g (step %d) in %d checks",
                step, self.settings.metric, self.best_value, self.best_step, self.bad_checks,
            )  # fmt: skip
            return True
        return False

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The model state at the best check (``None`` when no check had a finite value)."""
        return self.weights

    def record(self) -> dict:
        """What ``metrics.json`` holds under ``early_stopping``."""
        return {
            **self.settings.model_dump(mode="json"),
            "best_step": self.best_step,
            "best_value": self.best_value if math.isfinite(self.best_value) else None,
            "stopped_at_step": self.stopped_at,
            "checks": self.checks,
        }

    def state(self) -> dict:
        """The checkpoint entry (everything :meth:`from_state` needs)."""
        return {
            "checks": self.checks,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_checks": self.bad_checks,
            "stopped_at": self.stopped_at,
            "weights": self.weights,
        }

    @classmethod
    def from_state(cls, settings: EarlyStopping, state: dict | None) -> EarlyStopper:
        """The stopper a checkpoint saved (a fresh one for ``state=None``)."""
        return cls(settings, **state) if state else cls(settings)

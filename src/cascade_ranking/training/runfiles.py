"""The files of a run folder and their names (no torch import: reading run folders stays light)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "LOSS_CURVE_EVERY",
    "LOSS_CURVE_KEY",
    "METRICS_FILE",
    "default_run_dir",
    "package_versions",
]

#: The resolved :class:`~cascade_ranking.training.config.TrainConfig` of a run.
CONFIG_FILE = "config.json"
#: Seed, versions, timings, the bounded loss curve, validation and test metrics.
METRICS_FILE = "metrics.json"
#: Models, loss, optimizer and RNG states and the position in the stream (for ``--resume``).
CHECKPOINT_FILE = "checkpoint.pt"

#: ``metrics.json`` keeps the loss of every this-many-th optimizer step, under :data:`LOSS_CURVE_KEY`.
LOSS_CURVE_EVERY = 10
LOSS_CURVE_KEY = f"loss_curve_every_{LOSS_CURVE_EVERY}_steps"


def default_run_dir(method: str, num_stages: int, seed: int, root: Path = Path("runs")) -> Path:
    """``runs/<method>-<K>stage-seed<seed>-<UTC time>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{method}-{num_stages}stage-seed{seed}-{stamp}"


def package_versions() -> dict[str, str]:
    """Versions of this package, torch, numpy, pyarrow and Python, and the platform (saved in metrics.json)."""
    import platform

    import numpy as np
    import pyarrow
    import torch

    from .. import __version__

    return {
        "cascade_ranking": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }

"""The one fingerprint of a run: everything that defines its results, so that a saved run is reused (a benchmark)
or resumed only for the same run.

A run's fingerprint has three components, each hashed separately so a mismatch can say what changed:

* ``config``: the resolved :class:`~cascade_ranking.training.config.TrainConfig` less the fields that only say
  where the run reads, logs or runs, or how fast (:data:`NOT_FINGERPRINTED`: the dataset path — the dataset is
  identified by its contents instead —, the TensorBoard folder, the checkpoint interval, the thread count and the
  device; a run continued or reused on another device may differ in the last floating-point digits), and the
  fields added later (:data:`ADDED_FIELDS`) while they hold their "unset" value;
* ``dataset``: :func:`~cascade_ranking.data.store.dataset_fingerprint` (name, schema version, a content hash of
  ``schema.json`` and every partition file's size and Parquet footer);
* ``package``: this package's version (a release may change what a configuration computes).

It is stored in the run's checkpoint and in ``metrics.json`` (key :data:`FINGERPRINT_KEY`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.store import dataset_fingerprint
from .config import TrainConfig

__all__ = ["FINGERPRINT_KEY", "NOT_FINGERPRINTED", "fingerprint_differences", "run_fingerprint"]

#: The key of the fingerprint in ``metrics.json`` and in a checkpoint.
FINGERPRINT_KEY = "fingerprint"
#: Config fields that do not define a run's results: where it reads the data (identified by content), logs and
#: runs, how often it checkpoints, how many CPU threads it uses.
NOT_FINGERPRINTED = frozenset({"data", "tensorboard", "checkpoint_every", "threads", "device"})
#: Config fields added after the first release, with the value that means "as before they existed": left out of
#: the fingerprint at that value, so a run saved before a field existed keeps its fingerprint.
ADDED_FIELDS: dict[str, object] = {"model_options": {}, "early_stopping": None}


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_fingerprint(config: TrainConfig, data: str | Path) -> dict:
    """The fingerprint of training the *resolved* ``config`` on the dataset at ``data``.

    Returns:
        ``{"config": sha256, "dataset": {"name", "version", "content_sha256"}, "package": version,
        "digest": sha256 of the three}`` (JSON-ready).

    Raises:
        SchemaError / StoreError: the dataset is missing or unreadable.
    """
    from .. import __version__

    settings = config.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED))
    for name, unset in ADDED_FIELDS.items():
        if settings.get(name) == unset:
            del settings[name]
    parts = {"config": _sha256(settings), "dataset": dataset_fingerprint(data), "package": __version__}
    return {**parts, "digest": _sha256(parts)}


def fingerprint_differences(saved: object, current: dict) -> list[str]:
    """What differs between a saved fingerprint (``None`` or malformed: written by an older release) and
    ``current``: a list of ``"config"``, ``"dataset ..."``, ``"package ..."`` phrases; empty when they match."""
    if not isinstance(saved, dict) or "digest" not in saved:
        return ["no fingerprint saved (a run of an older release)"]
    if saved.get("digest") == current["digest"]:
        return []
    out = []
    if saved.get("config") != current["config"]:
        out.append("configuration")
    old, new = saved.get("dataset") or {}, current["dataset"]
    if old != new:
        name = f"{old.get('name')} -> {new['name']}" if old.get("name") != new["name"] else new["name"]
        out.append(f"dataset ({name}{'' if old.get('name') != new['name'] else ', other contents'})")
    if saved.get("package") != current["package"]:
        out.append(f"package version ({saved.get('package')} -> {current['package']})")
    return out or ["fingerprint"]

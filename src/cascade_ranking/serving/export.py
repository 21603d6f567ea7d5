"""Export a trained cascade for serving without this package's model code: ``torch.export`` programs of every
stage's serving parts, the item tables, the catalogue and a manifest.

Why ``torch.export`` (``.pt2`` files, read back by ``torch.export.load``): it ships with torch (no new
dependency), records a whole-graph ATen program with its weights that loads without the Python classes that
built it, keeps a dynamic candidate dimension, and is the input of AOTInductor for a C++ server. TorchScript
is deprecated in recent PyTorch, and ONNX would add onnx / onnxscript / onnxruntime dependencies while its
exporter goes through ``torch.export`` anyway. The programs take one request at a time (batch size 1; the
batch dimension of the models' code is specialised when traced), so an exported recommender scores requests
one by one.

Layout of ``OUT``::

    manifest.json            format, version, the dataset schema, serving keep, facts, and per stage:
                             name, kind and its files
    catalogue.parquet        the item table (``item.<field>`` columns)
    <stage>.user.pt2         two-tower / multi-embedding: features -> user side (``UserPart``)
    <stage>.items.npy        two-tower ``[M, D]`` / multi-embedding ``[M, H_i, k]`` float32 item cache
    <stage>.scorer.pt2       multi-embedding: ``CachedScorer``; full: ``FullScorer`` (candidates dynamic)

The folder is written beside ``OUT`` and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.atomic import staged_directory
from ..data.schema import DatasetSchema
from .catalogue import Catalogue
from .index import IndexOptions
from .recommender import Recommender
from .requests import Requests
from .stages import ServingStage

__all__ = ["EXPORT_FORMAT", "MANIFEST_FILE", "ExportError", "export_recommender", "load_export", "load_recommender"]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
EXPORT_FORMAT = "cascade-ranking-export"
EXPORT_VERSION = 1


class ExportError(ValueError):
    """An export folder is incomplete or of an unknown format (names the file)."""


def _example(recommender: Recommender) -> tuple[dict, torch.Tensor]:
    """One request (every id 1 or 0) and the rows of a few catalogue items, to trace the programs with."""
    schema = recommender.schema
    columns: dict[str, Any] = {f"{f.role}.{f.name}": [1] for f in schema.features if f.role != "item"}
    columns.update({f"history.{h.name}": [[1, 1]] for h in schema.history})
    features = Requests.from_columns(schema, columns, where="export example").tensors()
    n = min(recommender.catalogue.size, 5)
    return features, torch.arange(n)[None]


def _export_stage(stage: ServingStage, recommender: Recommender, out: Path) -> dict:
    features, rows = _example(recommender)
    f = (features["user"], features["context"], features["history"], features["history_mask"])
    entry: dict[str, Any] = {"name": stage.name, "kind": stage.kind, "user": None, "items": None, "scorer": None}
    candidates = torch.export.Dim("candidates", min=1)
    with torch.no_grad():
        if stage.user is not None:
            assert isinstance(stage.user, torch.nn.Module) and stage.items is not None
            torch.export.save(torch.export.export(stage.user, f), out / f"{stage.name}.user.pt2")
            np.save(out / f"{stage.name}.items.npy", stage.items.numpy())
            entry.update(user=f"{stage.name}.user.pt2", items=f"{stage.name}.items.npy")
        if stage.kind == "multi_embedding":
            assert isinstance(stage.scorer, torch.nn.Module) and stage.items is not None
            user = stage.user_side(features)
            args = (user, stage.items[rows])
            program = torch.export.export(stage.scorer, args, dynamic_shapes=(None, {1: candidates}))
        elif stage.kind == "full":
            assert isinstance(stage.scorer, torch.nn.Module)
            item = {n: torch.from_numpy(ids)[rows] for n, ids in recommender.catalogue.fields.items()}
            dyn = (*(_static(x) for x in f), {n: {1: candidates} for n in item}, {1: candidates})
            program = torch.export.export(stage.scorer, (*f, item, rows >= 0), dynamic_shapes=dyn)
        else:
            return entry
    torch.export.save(program, out / f"{stage.name}.scorer.pt2")
    entry["scorer"] = f"{stage.name}.scorer.pt2"
    return entry


def _static(x: Any) -> Any:
    return {n: None for n in x} if isinstance(x, dict) else None


def export_recommender(recommender: Recommender, out: str | Path) -> Path:
    """Write ``recommender`` (from a run) as an export folder ``out`` (see the module docstring).

    A previous export at ``out`` is replaced; any other existing non-empty folder is refused.

    Raises:
        ValueError: ``out`` is a non-empty folder that is not an export, or a stage is itself loaded from an
            export (export a run instead).
    """
    out = Path(out)
    with staged_directory(out, marker=MANIFEST_FILE) as tmp:
        recommender.catalogue.write(tmp / "catalogue.parquet")
        stages = []
        for stage in recommender.stages:
            if stage.user is not None and not isinstance(stage.user, torch.nn.Module):
                raise ValueError(f"stage {stage.name!r} was loaded from an export; export the run folder instead")
            stages.append(_export_stage(stage, recommender, tmp))
            log.info("exported stage %s (%s)", stage.name, stage.kind)
        manifest = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "torch": torch.__version__,
            "info": recommender.info,
            "keep": list(recommender.keep),
            "schema": recommender.schema.model_dump(mode="json"),
            "catalogue": "catalogue.parquet",
            "stages": stages,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not a readable manifest ({exc})") from None
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
        raise ExportError(f"{path}: not a {EXPORT_FORMAT} version {EXPORT_VERSION} manifest")
    return manifest


def _load_program(folder: Path, name: str | None) -> Any:
    if name is None:
        return None
    try:
        return torch.export.load(folder / name).module()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ExportError(f"{folder / name}: not a loadable torch.export program ({exc})") from None


def load_export(
    folder: str | Path, *, keep: Sequence[int] | None = None, index: IndexOptions | None = None
) -> Recommender:
    """A :class:`.Recommender` from an export folder (no model code needed: the stage programs are loaded).

    Args:
        folder: written by :func:`export_recommender`.
        keep: serving keep sizes (default: the export's).
        index: FAISS index options (default: exact).

    Raises:
        ExportError: a missing or unreadable file, or an unknown format.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    schema = DatasetSchema.model_validate(manifest["schema"])
    catalogue = Catalogue.read(folder / manifest["catalogue"], schema)
    stages = []
    for entry in manifest["stages"]:
        items = None
        if entry["items"] is not None:
            try:
                items = torch.from_numpy(np.load(folder / entry["items"]))
            except (OSError, ValueError) as exc:
                raise ExportError(f"{folder / entry['items']}: not a readable item table ({exc})") from None
        user, scorer = _load_program(folder, entry["user"]), _load_program(folder, entry["scorer"])
        stages.append(ServingStage(entry["name"], entry["kind"], user=user, items=items, scorer=scorer))
    info = {**manifest["info"], "export": str(folder)}
    return Recommender(schema, catalogue, stages, keep=keep or manifest["keep"], index=index, max_batch=1, info=info)


def load_recommender(
    source: str | Path,
    *,
    data: str | Path | None = None,
    keep: Sequence[int] | None = None,
    index: IndexOptions | None = None,
) -> Recommender:
    """A :class:`.Recommender` from a run folder (``config.json``) or an export folder (``manifest.json``).

    Raises:
        FileNotFoundError: ``source`` is neither.
        ExportError / ValueError: as :func:`load_export` / :meth:`.Recommender.from_run`.
    """
    source = Path(source)
    if (source / MANIFEST_FILE).is_file():
        return load_export(source, keep=keep, index=index)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a folder (expected a run folder or an export)")
    return Recommender.from_run(source, data=data, keep=keep, index=index)

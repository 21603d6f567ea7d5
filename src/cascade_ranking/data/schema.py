"""Feature spec and dataset schema (``schema.json``); no torch import (the batch type: :mod:`cascade_ranking.types`).

A *dataset* is a directory holding ``schema.json`` (a :class:`DatasetSchema`) and one Parquet file per
partition (a day for RecFlow, a week for MovieLens). One row is one *request*: its user and context
features, a behaviour history of ``history_length`` items, and ``num_candidates`` candidate items with a
``mask`` (valid slots), a ``stage`` (funnel position: the deepest stage of the logged system the candidate
reached, 0 = filtered first) and a graded ``label`` (higher is better).

Conventions shared by every dataset:

* every categorical field is an ``int64`` id in ``[0, vocab_size)``; id ``0`` means padding/unknown;
* history fields are item fields of past items and share the embedding table of the item field they name
  (``HistoryField.item_field``); a history slot is valid where its first field's id is non-zero;
* candidate order carries no information (the store writes candidates in a seeded random order and the
  loader shuffles again), so position can never leak the label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import validation_problems
from ..types import check_keep

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1

__all__ = [
    "SCHEMA_FILE",
    "SCHEMA_VERSION",
    "CategoricalField",
    "DatasetSchema",
    "HistoryField",
    "Partition",
    "PartitionRole",
    "Role",
    "SchemaError",
    "TrainDefaults",
    "roles_in_time_order",
]

Role = Literal["user", "context", "item"]
PartitionRole = Literal["train", "valid", "test"]


def roles_in_time_order(num_train: int, num_valid: int, num_test: int) -> list[PartitionRole]:
    """Partition roles in time order: ``num_train`` ``"train"``, then ``num_valid`` ``"valid"``, then ``"test"``."""
    train: PartitionRole = "train"
    valid: PartitionRole = "valid"
    test: PartitionRole = "test"
    return [train] * num_train + [valid] * num_valid + [test] * num_test


class SchemaError(ValueError):
    """A dataset's ``schema.json`` or its files do not match what the schema promises."""


class CategoricalField(BaseModel):
    """One categorical feature: ``name``, its ``role`` and ``vocab_size`` (ids in ``[0, vocab_size)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: Role
    vocab_size: int = Field(gt=1)
    description: str = ""


class HistoryField(BaseModel):
    """One field of the behaviour history: ``[B, L]`` ids of the item field ``item_field`` (shared table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    item_field: str


class Partition(BaseModel):
    """One partition file of the dataset (a day or a week), in time order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: PartitionRole
    num_requests: int = Field(ge=0)
    start: str = ""  # ISO date (UTC) of the partition's first day, for documentation
    end: str = ""  # ISO date (UTC) of the partition's last day

    @property
    def file_name(self) -> str:
        return f"{self.name}.parquet"


class TrainDefaults(BaseModel):
    """Training defaults a dataset carries (RecFlow: one pass at batch 1024)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=1024, gt=0)
    passes: int = Field(default=1, gt=0)


class DatasetSchema(BaseModel):
    """The contents of ``schema.json``: what every partition file of a dataset holds.

    Attributes:
        name: dataset name, e.g. ``"movielens-100k-2stage"``.
        features: categorical user, context and item fields.
        history: history fields (each names the item field whose embedding table it shares).
        history_length: L, the number of history slots per request.
        num_candidates: N, the number of candidate slots per request.
        funnel_positions: names of the funnel positions, index = the integer stored in ``stage``
            (0 = filtered first), e.g. ``["prerank_neg", "coarse_neg", "rank_neg", "rank_pos"]``.
        keep: default number of candidates each cascade stage keeps, retrieval first.
        gt_num: number of ground-truth candidates (top ``gt_num`` by label).
        partitions: partition files in time order with their role.
        train_defaults: the dataset's own training defaults.
        provenance: free-form facts on how the dataset was built (seed, source, construction).
    """

    model_config = ConfigDict(extra="forbid")

    version: int = SCHEMA_VERSION
    name: str
    features: list[CategoricalField]
    history: list[HistoryField] = []
    history_length: int = Field(ge=0)
    num_candidates: int = Field(gt=0)
    funnel_positions: list[str]
    keep: list[int]
    gt_num: int = Field(gt=0)
    partitions: list[Partition]
    train_defaults: TrainDefaults = TrainDefaults()
    provenance: dict = {}

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema version {v} is not supported (this release reads version {SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSchema:
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names: {sorted(dup)}")
        items = {f.name for f in self.features if f.role == "item"}
        if not items:
            raise ValueError("features: at least one field with role 'item' is required")
        for h in self.history:
            if h.item_field not in items:
                raise ValueError(
                    f"history field {h.name!r} names item_field {h.item_field!r}, "
                    f"which is not an item feature (item features: {sorted(items)})"
                )
        check_keep(self.keep, gt_num=self.gt_num, num_candidates=self.num_candidates, what="schema.json 'keep'")
        pnames = [p.name for p in self.partitions]
        if len(set(pnames)) != len(pnames):
            raise ValueError("partitions: duplicate partition names")
        return self

    # -- views ---------------------------------------------------------------------------------
    def fields_with_role(self, role: Role) -> list[CategoricalField]:
        return [f for f in self.features if f.role == role]

    def feature(self, name: str) -> CategoricalField:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}; features: {[f.name for f in self.features]}")

    def partitions_with_role(self, role: PartitionRole) -> list[Partition]:
        return [p for p in self.partitions if p.role == role]

    @property
    def num_stages(self) -> int:
        return len(self.keep)

    # -- io ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> DatasetSchema:
        """Read ``DIR/schema.json``. Raises :class:`SchemaError` naming the file and what is wrong."""
        path = Path(directory) / SCHEMA_FILE
        if not Path(directory).is_dir():
            raise SchemaError(f"dataset directory {str(directory)!r} does not exist")
        if not path.is_file():
            raise SchemaError(f"{path}: missing; a dataset directory must hold schema.json and partition files")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{path}: not readable JSON ({exc})") from exc
        try:
            return cls.model_validate(raw)
        except ValueError as exc:
            raise SchemaError(f"{path}: invalid schema: {validation_problems(exc, 'schema')}") from None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

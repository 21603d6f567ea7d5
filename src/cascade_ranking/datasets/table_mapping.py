"""The mapping of ``cascade-ranking prepare table``: which column of a long table is what (typed, validated).

A *long table* holds one row per (request, candidate): the request id and time, user and context features,
the candidate's item features, the funnel position the candidate reached and its feedback. A
:class:`TableMapping` (read from YAML by :func:`load_mapping`) names those columns and says how the store
dataset is laid out: vocabularies, numeric buckets, history, candidates per request, partitions, the cascade.
:data:`EXAMPLE_MAPPING` is a commented mapping that converts ``examples/table/logs.csv``
(``cascade-ranking prepare table --example`` prints it). The converter is :mod:`.table`.

**Encodings** (id 0 = padding / unknown everywhere, as in :mod:`cascade_ranking.data.schema`):

* categorical field: a vocabulary of the values seen ``vocabulary.min_count`` times or more (counted over
  requests for user and context fields, over candidate rows and history-list elements for item fields) in the
  requests of the partitions of
  ``vocabulary.fit_on`` (``train`` by default, so validation and test never shape it); values in ascending
  order get ids from ``oov_id + 1``; a value outside it gets ``oov_id`` (1 = its own id, 0 = shared with
  padding); a null value gets 0;
* numeric field: equal-frequency buckets: ``bins - 1`` cut points = the ``1/bins ... (bins-1)/bins``
  quantiles (linear interpolation) of the field's finite values in the train partitions, duplicates
  removed; id = 1 + the number of cut points ``<= x``; null or non-finite values get 0;
* derived context field (``derive``): from the request time in ``partitions.time_zone``: ``weekday``
  (Monday = 1 ... Sunday = 7), ``hour`` (hour + 1), ``minute`` (minute + 1) — the RecFlow context fields.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import validation_problems
from ..types import check_keep

__all__ = [
    "DERIVED_VOCAB",
    "EXAMPLE_MAPPING",
    "CandidatesSpec",
    "CascadeSpec",
    "EventsSpec",
    "FeatureSpec",
    "FunnelSpec",
    "HistorySpec",
    "LabelSpec",
    "PartitionsSpec",
    "RequestSpec",
    "TableMapping",
    "VocabularySpec",
    "load_mapping",
]

#: Vocabulary sizes of the derived time fields (ids 1.. as documented in the module docstring).
DERIVED_VOCAB = {"weekday": 8, "hour": 25, "minute": 61}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestSpec(_Spec):
    """The request columns: ``id`` (integers are kept as the store's ``request_id``; strings get ids 0, 1, ...
    in (time, id) order) and ``time`` (a timestamp, date, ISO string or integer epoch in ``time_unit``;
    naive timestamps and strings are local times in ``partitions.time_zone``)."""

    id: str
    time: str
    time_unit: Literal["s", "ms", "us"] = "s"


class FeatureSpec(_Spec):
    """One feature: store ``name``, source ``column`` (or ``derive`` for context time fields), ``type``
    (``categorical`` or ``numeric``) and, for numeric fields, the number of equal-frequency ``bins``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    column: str | None = None
    derive: Literal["weekday", "hour", "minute"] | None = None
    type: Literal["categorical", "numeric"] = "categorical"
    bins: int = Field(default=10, ge=2, le=1000)

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSpec:
        if (self.column is None) == (self.derive is None):
            raise ValueError(f"field {self.name!r}: give exactly one of 'column' and 'derive'")
        if self.derive is not None and self.type != "categorical":
            raise ValueError(f"field {self.name!r}: a derived time field is categorical")
        return self


class FunnelSpec(_Spec):
    """The funnel-position ``column`` (strings or integers, compared as text) and the ``stages`` it names,
    in funnel order: filtered first ... deepest (shown) last; store ``stage`` = the index in this list."""

    column: str
    stages: list[str] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> FunnelSpec:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"funnel.stages={self.stages}: stage names must be distinct")
        return self


class LabelSpec(_Spec):
    """The label: one numeric ``column``, or ``sum`` = a weighted sum of feedback columns (column -> weight)."""

    column: str | None = None
    sum: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LabelSpec:
        if (self.column is None) == (self.sum is None):
            raise ValueError("label: give exactly one of 'column' and 'sum'")
        if self.sum is not None and not self.sum:
            raise ValueError("label.sum: name at least one feedback column")
        return self

    @property
    def columns(self) -> dict[str, float]:
        """Feedback column -> weight (one column of weight 1 for ``column``)."""
        return {self.column: 1.0} if self.column is not None else dict(self.sum or {})


class EventsSpec(_Spec):
    """A separate behaviour table: ``path`` (file or folder, any supported format), its ``user`` and ``time``
    columns (time in ``time_unit`` when integer) and ``fields`` (history field -> events column). A request's
    history is its user's last L events strictly before the request time, most recent first.
    ``request_user`` names the user field of the long table that matches ``user`` (default: the first)."""

    path: Path
    user: str
    time: str
    time_unit: Literal["s", "ms", "us"] = "s"
    fields: dict[str, str] = Field(min_length=1)
    request_user: str | None = None


class HistorySpec(_Spec):
    """The behaviour history of ``length`` L: either ``lists`` (history field -> list column of the long table,
    one list per row, the same on every row of a request) or ``events``. Each history field is an item field
    (it shares that field's vocabulary), the candidate key first. ``order`` of the lists: ``recent_first``
    (slot 0 = the latest; longer lists keep their first L, shorter ones are padded at the end) or
    ``oldest_first`` (the latest goes to slot L-1; longer lists keep their last L, padding at the start)."""

    length: int = Field(ge=1)
    lists: dict[str, str] | None = None
    events: EventsSpec | None = None
    order: Literal["recent_first", "oldest_first"] = "recent_first"

    @model_validator(mode="after")
    def _one_source(self) -> HistorySpec:
        if (self.lists is None) == (self.events is None):
            raise ValueError("history: give exactly one of 'lists' and 'events'")
        if self.lists is not None and not self.lists:
            raise ValueError("history.lists: name at least one list column")
        return self

    @property
    def fields(self) -> list[str]:
        return list(self.lists) if self.lists is not None else list(self.events.fields if self.events else {})


class CandidatesSpec(_Spec):
    """Candidates per request: ``num`` = N slots, filled deepest stage first, the lowest stage that does not fit
    sampled uniformly without replacement (seeded by ``seed``); or ``per_stage`` = a fixed number of slots for
    each named stage (RecFlow style; N = their sum; a stage with more rows is sampled uniformly, one with fewer
    leaves padded slots, a stage not listed is dropped). Padded slots have ``mask`` False and 0 everywhere."""

    num: int | None = Field(default=None, gt=0)
    per_stage: dict[str, int] | None = None
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_policy(self) -> CandidatesSpec:
        if (self.num is None) == (self.per_stage is None):
            raise ValueError("candidates: give exactly one of 'num' and 'per_stage'")
        if self.per_stage is not None and (not self.per_stage or min(self.per_stage.values()) <= 0):
            raise ValueError("candidates.per_stage: positive counts for at least one stage")
        return self

    @property
    def num_candidates(self) -> int:
        return int(self.num) if self.num is not None else sum((self.per_stage or {}).values())


class PartitionsSpec(_Spec):
    """Time partitions: ``unit`` (``hour``, ``day`` or ``week`` = Monday to Sunday) in ``time_zone`` (IANA name).
    Roles: partitions starting at or after ``test_from`` are test, at or after ``valid_from`` valid (ISO
    local dates or times); or ``test`` / ``valid`` = the last partitions counted; the rest train. Names:
    ``2024-01-13`` (day), ``2024-01-13T05`` (hour), ``week-2024-01-08`` (the Monday)."""

    unit: Literal["hour", "day", "week"] = "day"
    time_zone: str = "UTC"
    valid_from: str | None = None
    test_from: str | None = None
    valid: int | None = Field(default=None, ge=0)
    test: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_rule(self) -> PartitionsSpec:
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone={self.time_zone!r}: not an IANA time zone (e.g. UTC, Asia/Shanghai)") from None
        for key in ("valid_from", "test_from"):
            text = getattr(self, key)
            try:
                if text is not None:
                    datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{key}={text!r}: not an ISO date or time (e.g. 2024-01-07)") from None
        by_date = self.valid_from is not None or self.test_from is not None
        by_count = self.valid is not None or self.test is not None
        if by_date == by_count:
            raise ValueError("partitions: give test_from (and valid_from) or test (and valid), not both")
        return self


class VocabularySpec(_Spec):
    """Vocabularies of categorical fields: ``min_count``, ``oov_id`` (1 or 0) and ``fit_on`` (train or all)."""

    min_count: int = Field(default=1, ge=1)
    oov_id: Literal[0, 1] = 1
    fit_on: Literal["train", "all"] = "train"


class CascadeSpec(_Spec):
    """The dataset's default cascade: ``keep`` per stage (retrieval first) and ``gt_num``."""

    keep: list[int] = Field(min_length=1)
    gt_num: int = Field(gt=0)


class TableMapping(_Spec):
    """A long table -> store dataset mapping (see the module docstring and :data:`EXAMPLE_MAPPING`)."""

    name: str = Field(min_length=1)
    request: RequestSpec
    user: list[FeatureSpec] = Field(min_length=1)
    context: list[FeatureSpec] = []
    item: list[FeatureSpec] = Field(min_length=1)
    funnel: FunnelSpec
    label: LabelSpec
    history: HistorySpec | None = None
    candidates: CandidatesSpec
    partitions: PartitionsSpec = PartitionsSpec(test=1)
    vocabulary: VocabularySpec = VocabularySpec()
    cascade: CascadeSpec
    batch_size: int = Field(default=256, gt=0)
    passes: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TableMapping:
        names = [f.name for f in (*self.user, *self.context, *self.item)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be distinct across user, context and item: {dup}")
        for role, specs in (("user", self.user), ("item", self.item)):
            if any(f.derive for f in specs):
                raise ValueError(f"{role}: 'derive' is for context fields only")
        if self.item[0].type != "categorical":
            raise ValueError(f"item[0] ({self.item[0].name!r}) is the candidate key: it must be categorical")
        if self.candidates.per_stage is not None:
            unknown = sorted(set(self.candidates.per_stage) - set(self.funnel.stages))
            if unknown:
                raise ValueError(f"candidates.per_stage names {unknown}, not among funnel.stages {self.funnel.stages}")
        self._check_history()
        check_keep(
            self.cascade.keep, gt_num=self.cascade.gt_num, num_candidates=self.candidates.num_candidates,
            what="cascade.keep",
        )  # fmt: skip
        return self

    def _check_history(self) -> None:
        if self.history is None:
            return
        categorical = [f.name for f in self.item if f.type == "categorical"]
        fields = self.history.fields
        bad = [f for f in fields if f not in categorical]
        if bad:
            raise ValueError(f"history fields {bad} are not categorical item fields {categorical}")
        if fields[0] != self.item[0].name:
            raise ValueError(f"history: the first history field must be the candidate key {self.item[0].name!r}")
        events = self.history.events
        if events is not None and events.request_user is not None:
            if events.request_user not in [f.name for f in self.user]:
                raise ValueError(f"history.events.request_user={events.request_user!r} is not a user field")
        if events is not None and self.request_user.type != "categorical":
            raise ValueError(f"history.events: the user field {self.request_user.name!r} must be categorical")

    @property
    def request_user(self) -> FeatureSpec:
        """The user field matched with the events table's user column."""
        events = self.history.events if self.history else None
        wanted = events.request_user if events is not None else None
        return next((f for f in self.user if f.name == wanted), self.user[0])


def load_mapping(path: str | Path) -> TableMapping:
    """Read and validate a YAML mapping file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable YAML or an invalid mapping; the message names the file and each field
            (dotted path) with what is wrong.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mapping file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}")
    try:
        mapping = TableMapping.model_validate(values)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid mapping: {validation_problems(exc, 'mapping')}") from None
    if mapping.history is not None and mapping.history.events is not None:
        events = mapping.history.events
        if not events.path.is_absolute():  # relative to the mapping file
            mapping = mapping.model_copy(
                update={
                    "history": mapping.history.model_copy(
                        update={"events": events.model_copy(update={"path": path.parent / events.path})}
                    )
                }
            )
    return mapping


EXAMPLE_MAPPING = """\
# cascade-ranking prepare table SRC OUT --mapping THIS_FILE
# SRC: Parquet, CSV or JSON-lines files, or a folder of them (hive folders such as dt=2024-01-01/ allowed),
# one row per (request, candidate). This mapping converts examples/table/logs.csv.
name: example-logs

request:
  id: request_id          # integers are kept; strings get ids 0, 1, ... in time order
  time: ts                # timestamp, date, ISO string, or integer epoch in time_unit
  time_unit: s            # s | ms | us

# Features: categorical (a vocabulary, ids from 2; 1 = out of vocabulary) or numeric (equal-frequency
# buckets fitted on the train partitions). Context fields may be derived from the request time.
user:
  - {name: user_id, column: user_id}
  - {name: age, column: age, type: numeric, bins: 6}
context:
  - {name: weekday, derive: weekday}      # Monday = 1 ... Sunday = 7, in partitions.time_zone
  - {name: hour, derive: hour}            # hour + 1
  - {name: device, column: device}
item:
  - {name: item_id, column: item_id}      # the first item field is the candidate key
  - {name: category, column: category}
  - {name: price, column: price, type: numeric, bins: 8}

funnel:
  column: stage                           # the deepest stage each candidate reached
  stages: [retrieved, preranked, ranked, shown]   # filtered first ... shown last

label:
  sum: {click: 1.0, like: 2.0}            # or: column: rating

history:                                  # optional
  length: 10
  lists: {item_id: history_items}         # a list column per history field (the candidate key first)
  order: recent_first                     # or oldest_first
  # events: {path: events.parquet, user: user_id, time: ts, fields: {item_id: item_id}}

candidates:
  num: 20                                 # N slots: deepest stages first, the lowest one sampled uniformly
  # per_stage: {shown: 5, ranked: 5, preranked: 5, retrieved: 5}   # RecFlow style fixed counts
  seed: 0

partitions:
  unit: day                               # hour | day | week (Monday to Sunday)
  time_zone: UTC                          # IANA name, e.g. Asia/Shanghai
  valid_from: "2024-01-06"                # partitions starting on or after these are valid / test
  test_from: "2024-01-07"
  # or count the last ones: {valid: 1, test: 1}

vocabulary:
  min_count: 1                            # rarer values are out of vocabulary
  oov_id: 1                               # 1: its own id; 0: shared with padding
  fit_on: train                           # train | all

cascade:
  keep: [10, 5]                           # candidates each stage keeps, retrieval first
  gt_num: 3
batch_size: 64
passes: 3
"""

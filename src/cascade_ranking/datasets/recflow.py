"""RecFlow's published files -> the request-list store (vectorized, one partition per day).

RecFlow (Liu et al., "RecFlow: An Industrial Full Flow Recommendation Dataset", ICLR 2025, arXiv 2410.20868)
logs Kuaishou's whole recommendation funnel for 37 days (9.3M requests). LCRON (Wang et al., "Learning Cascade
Ranking as One Network", ICML 2025, arXiv 2503.09492) trains on 2024-01-13 ... 2024-02-03 and tests on
2024-02-04. :func:`convert_recflow` turns the published layout into our store (:mod:`.store`).

**Published layout** (``SRC/``; ``<day>`` is a file stem such as ``2024-01-13``):

* ``all_stage/<day>.feather``: one row per (request, logged video). Read: the request columns
  ``request_id``, ``request_timestamp`` (ms), ``user_id``, ``device_id``, ``age``, ``gender``, ``province``;
  ``video_id``; the top group's flag and rank column (two-stage ``rank_pos`` / ``rank_index``, three-stage
  ``rerank_pos`` / ``rerank_index``). Other columns are ignored.
* ``request_id_dict/<day>.pkl``: ``{request_id: {flow: int64[n, 8]}}``, flows ``realshow``, ``rerank_pos``,
  ``rerank_neg``, ``rank_pos``, ``rank_neg``, ``coarse_neg``, ``prerank_neg``; columns :data:`FLOW_COLUMNS`.
  A flow missing from a request's dict is an empty flow.
* ``seq_effective_50_dict/<day>.pkl``: ``{request_id: int64[L, 10]}`` (L = 50), the effective-view history,
  left-padded; columns :data:`SEQ_COLUMNS`; a row is valid where its ``request_timestamp`` is > 0.
* ``others/id_cnt.pkl``: vocabulary counts. Accepted key spellings: ``video_id`` or ``photo_id``;
  ``category_level_two`` with or without surrounding white space (both occur in the wild).

**Request list** (matches the released LCRON data code, ``deep_components/dataset3.py`` of kwai/LCRON, read
and re-implemented, not copied; its two-stage counterpart is not in the public release, so the two-stage list
applies the same rules to the rank flows, as the paper describes):

* requests = the distinct ``request_id`` of the day's feather file, in order of first appearance (the release
  takes ``drop_duplicates`` of the request columns; a request whose rows disagree on them is kept once, with
  the values of its first row, and a warning is logged);
* candidates = the first 10 videos of each flow in the pickle's order (``GROUP_SIZE``), groups best first:
  two-stage ``rank_pos, rank_neg, coarse_neg, prerank_neg`` (funnel positions 3, 2, 1, 0; N = 40);
  three-stage ``rerank_pos, rerank_neg, rank_neg, coarse_neg, prerank_neg`` (positions 4 ... 0; N = 50).
  A flow with fewer than 10 videos leaves padded slots (``mask`` False, every column 0);
* label = ``30 - rank_index`` for the top group, where ``rank_index`` (three-stage: ``rerank_index``) is looked
  up in the feather file by (request, video) among rows whose ``rank_pos`` (``rerank_pos``) flag is 1, first
  row wins; a video not found gets the release's default index 500 (label -470, a warning counts them). The
  lower groups get constant labels, two-stage 7, 6, 5 and three-stage 8, 7, 6, 5 (the release's default
  indices 23, 24, 25 and 22, 23, 24, 25 subtracted from 30);
* keep: two-stage retrieval keeps 30 of 40, pre-ranking 20; three-stage 40 of 50, 30, 20; ``gt_num`` 10.

**Features** (every id is the raw RecFlow id + 1, so that 0 is padding, as the release's embedding tables do;
vocabulary = ``id_cnt`` count + 2):

* user: ``user_id``, ``device_id``, ``age``, ``gender``, ``province`` (from the feather file);
* context: the request's ``weekday`` (Monday = 1), ``hour`` + 1, ``minute`` + 1 from ``request_timestamp``;
* item: ``video_id``, ``author_id``, ``cate_two``, ``cate_one``, ``upload_type`` and ``upload_weekday``,
  ``upload_hour``, ``upload_minute`` from the flow's ``upload_timestamp`` (seconds);
* history: ``video_id``, ``author_id``, ``cate_two``, ``cate_one``, ``upload_type`` of the effective-view
  sequence (sharing the item tables), in the file's order (left-padded, oldest first), 0 at invalid rows.

Deviations from the release: times are converted in **UTC**, vectorized (the release calls
``time.localtime``, so its features depend on the machine's time zone; on a machine set to Beijing time, where
Kuaishou operates, its hour is the UTC hour + 8 and its weekday changes at 16:00 UTC); ``cate_one`` is
shifted by 1 like every other id (the release leaves it unshifted and pads with id 2, which is also a real
category; a relabelling); the upload time fields have their own embedding tables (the release shares the
request-time tables); a history row is valid where its timestamp is > 0 (the release shifts the last
``sum(valid)`` rows, the same rows for left-padded files); candidate slots are written in a seeded random
order per day (the loader shuffles them again), so position never leaks the label; padded slots hold 0 in
every column.

**Partitions**: one per day, named after the day; the last ``test_days`` days are ``test``, the
``valid_days`` before them ``valid``, the rest ``train``; training defaults: batch 1024, one pass.

**Speed and memory**: a day is read whole (the pickles are Python dicts; ``pickle.load`` of their many small
arrays, run with the garbage collector paused, is the dominant cost and cannot be avoided). The only
per-request Python is the unavoidable dict traversal: per block of 2,048 requests, one list comprehension
gathers every group's array and one ``np.concatenate`` joins them into a reused buffer; everything else is
numpy on ``[R, N]`` columns (first rows by index, a sorted-key join for the rank index, UTC fields by integer
arithmetic, ids shifted in place). ``benchmarks/convert_recflow.py`` compares it with a per-request port of
the released code on a simulated day of 100k requests: the transform is 25-30x faster, end to end ~4x
(file parsing and the Parquet write are shared). Peak memory is about one day's unpickled files plus ~5 kB
per request.

Bad input raises :class:`RecFlowFormatError` naming the file and the field; nothing is written to ``out``
unless every day converts (partitions go to a temporary folder that replaces ``out`` at the end).
"""

from __future__ import annotations

import gc
import logging
import pickle
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from ..data.atomic import staged_directory
from ..data.loader import shuffle_candidates
from ..data.schema import (
    SCHEMA_FILE,
    CategoricalField,
    DatasetSchema,
    HistoryField,
    Partition,
    PartitionRole,
    TrainDefaults,
    roles_in_time_order,
)
from ..data.store import write_partition, write_schema

__all__ = [
    "DATASET_VERSION",
    "FLOWS",
    "FLOW_COLUMNS",
    "FUNNELS",
    "GROUP_SIZE",
    "HISTORY_FIELDS",
    "ID_CNT_KEYS",
    "ITEM_COLUMNS",
    "ITEM_ID_FIELDS",
    "MISSING_RANK_INDEX",
    "RANK_INDEX_BASE",
    "REQUEST_COLUMNS",
    "SEQ_COLUMNS",
    "TIME_VOCAB",
    "USER_FIELDS",
    "FunnelSpec",
    "RecFlowDay",
    "RecFlowFormatError",
    "assign_roles",
    "convert_recflow",
    "day_partition",
    "funnel_spec",
    "list_days",
    "parse_days",
    "read_id_cnt",
    "recflow_schema",
    "to_store_arrays",
    "utc_time_fields",
]
# Other names without an underscore (DayFiles, day_progress, ...) are shared with
# ``synthetic.py`` and the benchmarks: package plumbing, not public API.

logger = logging.getLogger(__name__)

#: Sub-folders and files of the published layout.
FEATHER_DIR, REQUEST_DIR, SEQ_DIR, ID_CNT_FILE = (
    "all_stage",
    "request_id_dict",
    "seq_effective_50_dict",
    "others/id_cnt.pkl",
)
#: Columns of a flow array in ``request_id_dict/<day>.pkl``.
FLOW_COLUMNS = (
    "video_id", "author_id", "duration", "cate_two", "upload_type", "upload_timestamp", "cate_one", "effective_view"
)  # fmt: skip
#: Columns of a history array in ``seq_effective_50_dict/<day>.pkl``.
SEQ_COLUMNS = (
    "video_id", "author_id", "cate_two", "cate_one", "upload_type", "upload_timestamp", "duration",
    "request_timestamp", "playing_time", "request_id",
)  # fmt: skip
#: Flows of the request pickle, shown first.
FLOWS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg")
#: Request columns read from the feather file (the user fields follow the first two).
REQUEST_COLUMNS = ("request_id", "request_timestamp", "user_id", "device_id", "age", "gender", "province")
USER_FIELDS = REQUEST_COLUMNS[2:]
#: Item fields taken from the flow arrays (store name -> flow column) and the history fields.
ITEM_ID_FIELDS = {f: FLOW_COLUMNS.index(f) for f in ("video_id", "author_id", "cate_two", "cate_one", "upload_type")}
#: Flow columns a converted candidate keeps (the ids and the upload time).
ITEM_COLUMNS = (*ITEM_ID_FIELDS, "upload_timestamp")
HISTORY_FIELDS = {f: SEQ_COLUMNS.index(f) for f in ITEM_ID_FIELDS}
#: Canonical id_cnt key -> accepted spellings (keys are also matched after stripping white space).
ID_CNT_KEYS = {
    "user_id": ("user_id",),
    "device_id": ("device_id",),
    "age": ("age",),
    "gender": ("gender",),
    "province": ("province",),
    "video_id": ("video_id", "photo_id"),
    "author_id": ("author_id",),
    "cate_two": ("category_level_two",),
    "cate_one": ("category_level_one",),
    "upload_type": ("upload_type",),
}
#: Candidates taken from each flow.
GROUP_SIZE = 10
#: The top group's label is ``RANK_INDEX_BASE - rank_index``; unmatched videos get ``MISSING_RANK_INDEX``.
RANK_INDEX_BASE = 30
MISSING_RANK_INDEX = 500
#: Context vocabularies: 1-based weekday (Monday = 1), hour + 1, minute + 1; 0 = padding.
TIME_VOCAB = {"weekday": 8, "hour": 25, "minute": 61}
#: Seed of the per-day candidate slot shuffle (combined with the CRC-32 of the day name).
SHUFFLE_SEED = 20240113
DATASET_VERSION = 1


class RecFlowFormatError(ValueError):
    """A RecFlow source file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class FunnelSpec:
    """How a cascade of ``stages`` stages reads RecFlow's flows.

    Attributes:
        stages: number of cascade stages (2 or 3).
        groups: flows taken as candidate groups, best first (funnel position ``len(groups) - 1 - g``).
        top_flag: feather column flagging the top group's rows (e.g. ``"rank_pos"``).
        top_index: feather column holding the top group's rank index (label ``30 - index``).
        lower_labels: constant labels of the groups after the first.
        keep: default keep sizes of the cascade, retrieval first.
        lowest_size: candidate slots of the lowest group (``prerank_neg``, filtered first); the other
            groups have ``GROUP_SIZE``. RecFlow's files: ``GROUP_SIZE``; the simulator may use more
            (:meth:`with_candidates`), as a production pre-ranking stage scores thousands per request.
    """

    stages: int
    groups: tuple[str, ...]
    top_flag: str
    top_index: str
    lower_labels: tuple[float, ...]
    keep: tuple[int, ...]
    lowest_size: int = GROUP_SIZE

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Candidate slots of each group, best first."""
        return (GROUP_SIZE,) * (len(self.groups) - 1) + (self.lowest_size,)

    @property
    def num_candidates(self) -> int:
        return sum(self.group_sizes)

    def with_candidates(self, candidates: int | None) -> FunnelSpec:
        """This funnel with ``candidates`` slots per request (``None``: unchanged); the lowest group takes
        what the others (``GROUP_SIZE`` each) leave. Raises ``ValueError`` if that is below ``GROUP_SIZE``."""
        if candidates is None:
            return self
        lowest = int(candidates) - GROUP_SIZE * (len(self.groups) - 1)
        if int(candidates) != candidates or lowest < GROUP_SIZE:
            raise ValueError(
                f"candidates={candidates!r}: a {self.stages}-stage funnel needs at least "
                f"{GROUP_SIZE * len(self.groups)} ({GROUP_SIZE} per funnel group)"
            )
        return replace(self, lowest_size=lowest)

    @property
    def funnel_positions(self) -> list[str]:
        """Position names, index = the stored ``stage`` integer (0 = filtered first)."""
        return list(reversed(self.groups))


FUNNELS = {
    2: FunnelSpec(2, ("rank_pos", "rank_neg", "coarse_neg", "prerank_neg"), "rank_pos", "rank_index",
                  (7.0, 6.0, 5.0), (30, 20)),
    3: FunnelSpec(3, ("rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"), "rerank_pos",
                  "rerank_index", (8.0, 7.0, 6.0, 5.0), (40, 30, 20)),
}  # fmt: skip


def funnel_spec(stages: int) -> FunnelSpec:
    """The :class:`FunnelSpec` of ``stages``; raises ``ValueError`` naming ``stages`` unless it is 2 or 3."""
    if stages not in FUNNELS:
        raise ValueError(f"stages={stages!r}: RecFlow supports 2 or 3 stages")
    return FUNNELS[stages]


# ------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------
def utc_time_fields(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based UTC weekday (Monday = 1), hour + 1 and minute + 1 of Unix times in seconds (any shape, int).

    Integer arithmetic (floor division, so times before 1970 work too); never the local time zone.
    """
    return _time_fields(np.array(seconds, dtype=np.int64), inplace=True)


_DAY_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


def parse_days(spec: str | Sequence[str]) -> list[str]:
    """Expand a day list: ``"2024-01-13..2024-02-04"`` (inclusive ISO range), comma lists, or a sequence.

    Raises ``ValueError`` naming the bad element (an empty list, a malformed or reversed range).
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    days: list[str] = []
    for raw in parts:
        item = str(raw).strip()
        if not item:
            continue
        m = _DAY_RANGE.match(item)
        if m:
            try:
                a, b = np.datetime64(m.group(1), "D"), np.datetime64(m.group(2), "D")
            except ValueError as exc:
                raise ValueError(f"days: {item!r} is not a range of ISO dates ({exc})") from exc
            if b < a:
                raise ValueError(f"days: range {item!r} ends before it starts")
            days.extend(str(d) for d in np.arange(a, b + np.timedelta64(1, "D")))
        else:
            days.append(item)
    if not days:
        raise ValueError(f"days={spec!r}: no day given")
    dup = sorted({d for d in days if days.count(d) > 1})
    if dup:
        raise ValueError(f"days: listed more than once: {dup}")
    return days


def list_days(src: str | Path) -> list[str]:
    """The days of a RecFlow folder: the sorted stems of ``SRC/all_stage/*.feather``."""
    folder = Path(src) / FEATHER_DIR
    if not folder.is_dir():
        raise RecFlowFormatError(f"{folder}: missing; a RecFlow folder holds {FEATHER_DIR}/<day>.feather files")
    return sorted(p.stem for p in folder.glob("*.feather"))


def _load_pickle(path: Path, what: str):
    """``pickle.load`` with the cyclic garbage collector paused (unpickling ~10^6 containers otherwise
    triggers collections that traverse the growing dict again and again; about 2x faster)."""
    if not path.is_file():
        raise RecFlowFormatError(f"{path}: {what} file missing")
    enabled = gc.isenabled()
    gc.disable()
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise RecFlowFormatError(f"{path}: not a readable pickle of {what} (truncated or corrupt?): {exc}") from exc
    finally:
        if enabled:
            gc.enable()


def read_id_cnt(path: str | Path) -> dict[str, int]:
    """Read ``others/id_cnt.pkl`` into canonical keys (:data:`ID_CNT_KEYS`) -> count.

    Raises:
        RecFlowFormatError: the file is missing or unreadable, not a dict, a key is missing under every
            accepted spelling, or a count is not a positive integer.
    """
    path = Path(path)
    raw = _load_pickle(path, "vocabulary counts (id_cnt)")
    if not isinstance(raw, dict):
        raise RecFlowFormatError(f"{path}: expected a dict of vocabulary counts, got {type(raw).__name__}")
    norm = {str(k).strip(): v for k, v in raw.items()}
    out: dict[str, int] = {}
    missing = []
    for key, spellings in ID_CNT_KEYS.items():
        found = [s for s in spellings if s in norm]
        if not found:
            missing.append(" or ".join(repr(s) for s in spellings))
            continue
        value = norm[found[0]]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
            raise RecFlowFormatError(f"{path}: key {found[0]!r} holds {value!r}, expected a positive integer count")
        out[key] = int(value)
    if missing:
        raise RecFlowFormatError(f"{path}: missing key(s) {', '.join(missing)}; keys present: {sorted(map(str, raw))}")
    return out


def recflow_schema(
    *,
    stages: int,
    id_cnt: dict[str, int],
    history_length: int,
    partitions: list[Partition],
    name: str | None = None,
    provenance: dict | None = None,
    candidates: int | None = None,
) -> DatasetSchema:
    """The store schema of a RecFlow-layout dataset (see the module docstring for the fields); ``candidates``
    slots per request (default: ``GROUP_SIZE`` per funnel group, see :meth:`FunnelSpec.with_candidates`)."""
    spec = funnel_spec(stages).with_candidates(candidates)
    vocab = {k: v + 2 for k, v in id_cnt.items()}
    features = [CategoricalField(name=f, role="user", vocab_size=vocab[f]) for f in USER_FIELDS]
    features += [CategoricalField(name=f, role="context", vocab_size=v) for f, v in TIME_VOCAB.items()]
    features += [CategoricalField(name=f, role="item", vocab_size=vocab[f]) for f in ITEM_ID_FIELDS]
    features += [CategoricalField(name=f"upload_{f}", role="item", vocab_size=v) for f, v in TIME_VOCAB.items()]
    return DatasetSchema(
        name=name or f"recflow-{stages}stage",
        features=features,
        history=[HistoryField(name=f, item_field=f) for f in HISTORY_FIELDS],
        history_length=history_length,
        num_candidates=spec.num_candidates,
        funnel_positions=spec.funnel_positions,
        keep=list(spec.keep),
        gt_num=GROUP_SIZE,
        partitions=partitions,
        train_defaults=TrainDefaults(batch_size=1024, passes=1),
        provenance=provenance or {},
    )


def assign_roles(days: Sequence[str], test_days: int, valid_days: int) -> list[PartitionRole]:
    """Roles of ``days`` in time order: the last ``test_days`` test, ``valid_days`` before valid, rest train."""
    if test_days < 0 or valid_days < 0:
        raise ValueError(f"test_days={test_days}, valid_days={valid_days}: must be >= 0")
    if test_days + valid_days > len(days):
        raise ValueError(f"test_days={test_days} + valid_days={valid_days} exceed the {len(days)} day(s) to convert")
    n_train = len(days) - test_days - valid_days
    return roles_in_time_order(n_train, valid_days, test_days)


def day_partition(day: str, role: PartitionRole, num_requests: int) -> Partition:
    """A :class:`Partition` named after ``day`` (start/end filled when the name is an ISO date)."""
    iso = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", day))
    return Partition(name=day, role=role, num_requests=num_requests, start=day if iso else "", end=day if iso else "")


def day_shuffle_rng(day: str) -> np.random.Generator:
    """The generator of a day's candidate-slot shuffle (depends only on the day's name)."""
    return np.random.default_rng([SHUFFLE_SEED, zlib.crc32(day.encode())])


# ------------------------------------------------------------------------------------------------------
# one day in array form, and its store columns
# ------------------------------------------------------------------------------------------------------
@dataclass
class RecFlowDay:
    """One day of RecFlow requests as arrays (raw RecFlow ids, before the +1 shift). R requests.

    Attributes:
        name: the day (partition name).
        request_id: ``[R]`` int64.
        request_timestamp: ``[R]`` int64 milliseconds since the Unix epoch.
        user: ``USER_FIELDS`` -> ``[R]`` int64 raw ids.
        items: :data:`ITEM_COLUMNS` -> ``[R, N]`` int64 candidate columns (N = groups x ``GROUP_SIZE``):
            slot ``g * GROUP_SIZE + j`` holds the ``j``-th video of group ``g``'s flow (groups best first, file
            order within a flow); slots beyond a group's count hold arbitrary values.
        counts: ``[R, groups]`` int64, the videos taken from each group's flow (at most ``GROUP_SIZE``).
        top_rank_index: ``[R, GROUP_SIZE]`` float64 rank index of the top group's slots (label ``30 - x``).
        history: :data:`HISTORY_COLUMNS` -> ``[R, L]`` int64 raw history columns (a row is valid where its
            ``request_timestamp`` is > 0).
        sources: ``"user"``, ``"item"``, ``"history"`` -> file named in error messages.
    """

    name: str
    request_id: np.ndarray
    request_timestamp: np.ndarray
    user: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    counts: np.ndarray
    top_rank_index: np.ndarray
    history: dict[str, np.ndarray]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return len(self.request_id)


def _shift_ids(
    values: np.ndarray, valid: np.ndarray | None, vocab: int, *, where: str, field_name: str, inplace: bool
) -> np.ndarray:
    """``values + 1`` at valid slots, 0 elsewhere, checked to lie in ``[0, vocab)`` (in ``values`` itself
    when ``inplace`` and ``values`` is a writable contiguous int64 array, else in a new array).

    Raises :class:`RecFlowFormatError` naming ``where`` and ``field_name`` when a valid raw id is outside
    ``[-1, vocab - 2]`` (``vocab - 2`` is the id_cnt count); ``values`` is unchanged then.
    """
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < -1 or hi > vocab - 2:
        bad = (values < -1) | (values > vocab - 2)
        if valid is not None:
            bad &= valid
        if bad.any():
            raw = values[bad]
            raise RecFlowFormatError(
                f"{where}: field {field_name!r} holds ids in [{raw.min()}, {raw.max()}], outside [-1, {vocab - 2}] "
                f"allowed by id_cnt (count {vocab - 2}); {int(bad.sum())} value(s) out of range"
            )
    own = inplace and values.dtype == np.int64 and values.flags.c_contiguous and values.flags.writeable
    out = np.add(values, 1, out=values if own else None, dtype=np.int64)
    if valid is not None:
        np.multiply(out, valid, out=out)
    return out


def _time_fields(seconds: np.ndarray, *, inplace: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`utc_time_fields`, reusing ``seconds`` (int64, contiguous) for the minute when ``inplace``."""
    s = seconds if inplace and seconds.dtype == np.int64 and seconds.flags.c_contiguous else seconds.astype(np.int64)
    weekday = np.floor_divide(s, 86_400)
    np.remainder(s, 86_400, out=s)
    hour = np.floor_divide(s, 3_600)
    np.remainder(s, 3_600, out=s)
    minute = np.floor_divide(s, 60, out=s)
    weekday += 3  # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays
    np.remainder(weekday, 7, out=weekday)
    weekday += 1
    hour += 1
    minute += 1
    return weekday, hour, minute


def to_store_arrays(
    day: RecFlowDay, spec: FunnelSpec, schema: DatasetSchema, *, inplace: bool = False
) -> dict[str, np.ndarray]:
    """The store columns of one day (grouped slot order; shuffle with :func:`shuffle_candidates`).

    Returns ``[R]`` columns ``request_id``, ``user.*``, ``context.*``; ``[R, L]`` ``history.*``;
    ``[R, N]`` ``item.*``, ``mask`` (bool), ``stage`` (int8), ``label`` (float32), N = ``spec.num_candidates``;
    candidate slots ``g * 10 ... g * 10 + 9`` hold group ``g`` (best first; the lowest group takes
    ``spec.lowest_size`` slots), padded slots hold 0. With
    ``inplace``, the day's ``items`` and ``history`` arrays are turned into the store columns (no new
    ``[R, N]`` allocations; the day must not be used afterwards).

    Raises:
        RecFlowFormatError: an id outside its vocabulary (names the source file and the field).
    """
    r, g = day.num_requests, GROUP_SIZE
    vocab = {f.name: f.vocab_size for f in schema.features}
    src = day.sources
    arrays: dict[str, np.ndarray] = {"request_id": np.asarray(day.request_id, dtype=np.int64)}
    where_user = src.get("user", "user")
    for f in USER_FIELDS:
        arrays[f"user.{f}"] = _shift_ids(day.user[f], None, vocab[f], where=where_user, field_name=f, inplace=False)
    for f, values in zip(TIME_VOCAB, utc_time_fields(np.floor_divide(day.request_timestamp, 1000))):
        arrays[f"context.{f}"] = values

    if spec.lowest_size == g:
        mask = (np.arange(g)[None, None, :] < day.counts[:, :, None]).reshape(r, spec.num_candidates)
    else:
        mask = np.concatenate(
            [np.arange(size)[None, :] < day.counts[:, i, None] for i, size in enumerate(spec.group_sizes)], axis=1
        )
    where_items = src.get("item", "items")
    for f in ITEM_ID_FIELDS:
        arrays[f"item.{f}"] = _shift_ids(day.items[f], mask, vocab[f], where=where_items, field_name=f, inplace=inplace)
    for f, values in zip(TIME_VOCAB, _time_fields(day.items["upload_timestamp"], inplace=inplace)):
        arrays[f"item.upload_{f}"] = np.multiply(values, mask, out=values)
    positions = np.arange(len(spec.groups) - 1, -1, -1, dtype=np.int8)  # best group = highest position
    arrays["mask"] = mask
    arrays["stage"] = np.where(mask, np.repeat(positions, spec.group_sizes)[None, :], np.int8(0))
    label = np.empty((r, spec.num_candidates), dtype=np.float32)
    label[:, :g] = RANK_INDEX_BASE - day.top_rank_index
    label[:, g:] = np.repeat(np.asarray(spec.lower_labels, dtype=np.float32), spec.group_sizes[1:])
    arrays["label"] = np.multiply(label, mask, out=label)

    hist_valid = day.history["request_timestamp"] > 0
    where_hist = src.get("history", "history")
    for f in HISTORY_FIELDS:
        arrays[f"history.{f}"] = _shift_ids(
            day.history[f], hist_valid, vocab[f], where=where_hist, field_name=f, inplace=inplace
        )
    return arrays


# ------------------------------------------------------------------------------------------------------
# reading one day of the published layout
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayFiles:
    day: str
    feather: Path
    requests: Path
    history: Path

    @classmethod
    def of(cls, src: Path, day: str) -> DayFiles:
        return cls(
            day,
            src / FEATHER_DIR / f"{day}.feather",
            src / REQUEST_DIR / f"{day}.pkl",
            src / SEQ_DIR / f"{day}.pkl",
        )

    def check_exist(self) -> None:
        for path, what in ((self.feather, "feather"), (self.requests, "request flows"), (self.history, "history")):
            if not path.is_file():
                raise RecFlowFormatError(f"{path}: {what} file of day {self.day!r} missing")


def _read_feather(path: Path, columns: Sequence[str]) -> pa.Table:
    """Read ``columns`` of a feather file; errors name the file (truncated) or the missing column."""
    if not path.is_file():
        raise RecFlowFormatError(f"{path}: feather file missing")
    try:
        with pa.memory_map(str(path)) as source:
            names = pa.ipc.open_file(source).schema.names
    except (pa.ArrowException, OSError) as exc:
        try:  # Feather V1 files are not Arrow IPC files
            names = feather.read_table(path).column_names
        except (pa.ArrowException, OSError):
            raise RecFlowFormatError(f"{path}: not a readable Feather file (truncated or corrupt?): {exc}") from exc
    missing = [c for c in columns if c not in names]
    if missing:
        raise RecFlowFormatError(f"{path}: column(s) {missing} missing (columns present: {names})")
    try:
        return feather.read_table(path, columns=list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise RecFlowFormatError(f"{path}: not a readable Feather file (truncated or corrupt?): {exc}") from exc


def _int_column(table: pa.Table, name: str, path: Path, *, null: int | None = None) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        if null is None:
            raise RecFlowFormatError(f"{path}: column {name!r} has {col.null_count} null value(s)")
        col = pc.fill_null(col, null)
    try:
        return col.cast(pa.int64()).to_numpy()
    except (pa.ArrowException, ValueError) as exc:
        raise RecFlowFormatError(f"{path}: column {name!r} ({col.type}) is not an integer column: {exc}") from exc


@dataclass
class _FeatherDay:
    request_id: np.ndarray  # [R] first-appearance order
    columns: dict[str, np.ndarray]  # REQUEST_COLUMNS -> [R]
    top_request: np.ndarray  # [T] dense request index of the top group's rows
    top_video: np.ndarray  # [T] raw video id
    top_index: np.ndarray  # [T] float64 rank index (NaN where null)


def _group_requests(rid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct request ids in order of first appearance, their first rows, and each row's dense index.

    O(rows) when every request's rows are contiguous (as published); a sort otherwise.
    """
    if len(rid) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    change = np.empty(len(rid), dtype=bool)
    change[0] = True
    np.not_equal(rid[1:], rid[:-1], out=change[1:])
    first = np.flatnonzero(change)
    runs = rid[first]
    if len(np.unique(runs)) == len(runs):  # contiguous groups
        return runs, first, np.cumsum(change) - 1
    uniq, first, inverse = np.unique(rid, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    dense = np.empty_like(order)
    dense[order] = np.arange(len(order))
    return uniq[order], first[order], dense[inverse.reshape(-1)]


def _read_requests(path: Path, spec: FunnelSpec) -> _FeatherDay:
    table = _read_feather(path, [*REQUEST_COLUMNS, "video_id", spec.top_flag, spec.top_index])
    request_id, first_rows, row_request = _group_requests(_int_column(table, "request_id", path))
    columns = {"request_id": request_id}
    for name in REQUEST_COLUMNS[1:]:
        values = _int_column(table, name, path, null=None if name == "request_timestamp" else -1)
        columns[name] = values[first_rows]
        disagree = int(np.count_nonzero(values != columns[name][row_request]))
        if disagree:
            logger.warning("%s: %d row(s) disagree with their request's first row on %r", path, disagree, name)
    try:
        flag = pc.fill_null(pc.equal(table.column(spec.top_flag).cast(pa.float64()), 1.0), False)
        flag = flag.to_numpy(zero_copy_only=False)
        index = pc.fill_null(table.column(spec.top_index).cast(pa.float64()), np.nan).to_numpy()
    except (pa.ArrowException, ValueError) as exc:
        raise RecFlowFormatError(
            f"{path}: column {spec.top_flag!r} or {spec.top_index!r} is not numeric: {exc}"
        ) from exc
    infinite = np.flatnonzero(np.isinf(index))
    if len(infinite):  # NaN means "no rank row" (the release default, warned later); inf is corrupt data
        raise RecFlowFormatError(
            f"{path}: column {spec.top_index!r} holds {len(infinite)} infinite value(s) (first at row "
            f"{int(infinite[0])}); expected finite rank indices (or null/NaN for none)"
        )
    video = _int_column(table, "video_id", path, null=-1)
    return _FeatherDay(
        request_id=request_id,
        columns=columns,
        top_request=row_request[flag],
        top_video=video[flag],
        top_index=index[flag],
    )


def _lookup_top_index(fd: _FeatherDay, video: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank index of each valid ``[R, G]`` (request, video) slot among the feather's top-group rows.

    A sorted-key join: key = (request index, video id) packed into one int64 (video ids densified first
    when the product could overflow). First matching row wins; unmatched slots get
    :data:`MISSING_RANK_INDEX`. Returns (``[R, G]`` float64 index, number of misses).
    """
    r, g = video.shape
    out = np.zeros((r, g), dtype=np.float64)
    q_req = np.broadcast_to(np.arange(r)[:, None], (r, g))[valid]
    q_vid = video[valid]
    row_vid = fd.top_video
    lo = min(int(row_vid.min(initial=0)), int(q_vid.min(initial=0)))
    hi = max(int(row_vid.max(initial=0)), int(q_vid.max(initial=0)))
    span = hi - lo + 1
    if span * max(r, 1) < 2**62:
        row_key, q_key = fd.top_request * span + (row_vid - lo), q_req * span + (q_vid - lo)
    else:
        values, inv = np.unique(np.concatenate([row_vid, q_vid]), return_inverse=True)
        span = max(len(values), 1)
        row_key, q_key = fd.top_request * span + inv[: len(row_vid)], q_req * span + inv[len(row_vid) :]
    keys, first = np.unique(row_key, return_index=True)
    if len(keys):
        pos = np.minimum(np.searchsorted(keys, q_key), len(keys) - 1)
        idx = np.where(keys[pos] == q_key, fd.top_index[first[pos]], np.nan)
    else:
        idx = np.full(len(q_key), np.nan)
    missing = np.isnan(idx)
    out[valid] = np.where(missing, MISSING_RANK_INDEX, idx)
    return out, int(missing.sum())


def _concat_rows(
    arrays: list, width: int, *, path: Path, what: Sequence[str], rids: list, buffer: _Buffer
) -> np.ndarray:
    """``np.concatenate`` of ``[n_i, width]`` arrays into ``buffer`` (reused across blocks) as int64.

    Request ``i`` owns arrays ``i * P ... i * P + P - 1`` (``P = len(what)``, the names of its arrays, e.g.
    flows). Raises :class:`RecFlowFormatError` naming the request whose array has the wrong shape or type.
    """
    try:
        out = buffer.rows(sum(map(len, arrays)))
        np.concatenate(arrays, axis=0, out=out, casting="same_kind")
        return out
    except (ValueError, TypeError):
        pass
    for i, a in enumerate(arrays):
        if np.ndim(a) != 2 or np.shape(a)[1] != width:
            raise RecFlowFormatError(
                f"{path}: request {rids[i // len(what)]}: {what[i % len(what)]} has shape {np.shape(a)}, "
                f"expected (n, {width})"
            )
        if np.asarray(a).dtype.kind not in "iu":
            raise RecFlowFormatError(
                f"{path}: request {rids[i // len(what)]}: {what[i % len(what)]} holds {np.asarray(a).dtype} "
                "values, expected integers"
            )
    raise RecFlowFormatError(f"{path}: {what[0]} arrays cannot be joined into an int64 array")


class _Buffer:
    """A growing ``[rows, width]`` int64 scratch array, reused block after block (stays in cache, no page
    faults from fresh allocations)."""

    def __init__(self, width: int) -> None:
        self.data = np.empty((0, width), dtype=np.int64)

    def rows(self, n: int) -> np.ndarray:
        if n > len(self.data):
            self.data = np.empty((max(n, 2 * len(self.data)), self.data.shape[1]), dtype=np.int64)
        return self.data[:n]


#: Requests gathered per block: small enough for a block's rows to stay in the CPU cache.
_BLOCK = 2_048


def _gather_flows(
    fd: _FeatherDay, request_dict: dict, files: DayFiles, spec: FunnelSpec
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The candidates of every request: :data:`ITEM_COLUMNS` -> ``[R, N]`` int64 and ``[R, groups]`` counts.

    Slot ``g * GROUP_SIZE + j`` holds row ``j`` of group ``g``'s flow; slots beyond the count hold arbitrary
    values. Per block of requests, one list comprehension gathers every group's array and one
    ``np.concatenate`` joins them into a reused buffer; the first rows of each flow are then taken by index.
    Flows are cut to ``GROUP_SIZE`` rows before joining only when a block's flows are long (over 4x what is
    kept), which bounds memory.
    """
    rids = fd.request_id.tolist()
    entries = _lookup_requests(request_dict, rids, files.requests, files.feather)
    groups, k, width = spec.groups, len(spec.groups), len(FLOW_COLUMNS)
    what = [f"flow {f!r}" for f in groups]
    r, n = len(rids), spec.num_candidates
    items = {c: np.zeros((r, n), dtype=np.int64) for c in ITEM_COLUMNS}
    counts = np.zeros((r, k), dtype=np.int64)
    empty = np.zeros((0, width), dtype=np.int64)
    slot = np.arange(GROUP_SIZE)
    buffer = _Buffer(width)
    for lo in range(0, r, _BLOCK):
        block = entries[lo : lo + _BLOCK]
        hi = lo + len(block)
        try:
            arrays = [e.get(f, empty) for e in block for f in groups]
        except AttributeError:
            bad = next(i for i, e in enumerate(block) if not isinstance(e, dict))
            raise RecFlowFormatError(f"{files.requests}: request {rids[lo + bad]}: expected a dict of flows") from None
        lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        if lengths.sum() > 4 * GROUP_SIZE * len(arrays):
            for i in np.flatnonzero(lengths > GROUP_SIZE).tolist():
                arrays[i] = arrays[i][:GROUP_SIZE]
            lengths = np.minimum(lengths, GROUP_SIZE)
        flat = _concat_rows(arrays, width, path=files.requests, what=what, rids=rids[lo:hi], buffer=buffer)
        taken = np.minimum(lengths, GROUP_SIZE).reshape(-1, k)  # [b, k]
        counts[lo:hi] = taken
        if not len(flat):
            continue
        starts = (np.cumsum(lengths) - lengths).reshape(taken.shape)
        idx = (starts[:, :, None] + slot).reshape(len(block), n)
        for c in ITEM_COLUMNS:  # mode="clip": indices past the end (empty slots) read the last row, unbuffered
            np.take(flat[:, FLOW_COLUMNS.index(c)], idx, out=items[c][lo:hi], mode="clip")
    return items, counts


#: History columns a converted request keeps (the ids and the timestamp that marks valid rows).
HISTORY_COLUMNS = (*HISTORY_FIELDS, "request_timestamp")


def _gather_history(fd: _FeatherDay, seq_dict: dict, files: DayFiles) -> dict[str, np.ndarray]:
    """:data:`HISTORY_COLUMNS` -> ``[R, L]`` int64 raw history columns (every request must have the same L)."""
    rids = fd.request_id.tolist()
    seqs = _lookup_requests(seq_dict, rids, files.history, files.feather)
    r, width = len(seqs), len(SEQ_COLUMNS)
    # the day's history length is its most common one, so the odd request out (e.g. an empty history) is blamed,
    # even when it comes first
    length = (
        int(np.bincount(np.fromiter((len(a) if hasattr(a, "__len__") else 0 for a in seqs), np.int64, r)).argmax())
        if seqs
        else 50
    )
    out = {c: np.empty((r, length), dtype=np.int64) for c in HISTORY_COLUMNS}
    buffer = _Buffer(width)
    for lo in range(0, r, _BLOCK):
        block = seqs[lo : lo + _BLOCK]
        flat = _concat_rows(block, width, path=files.history, what=["history"], rids=rids[lo:], buffer=buffer)
        if len(flat) != length * len(block):
            bad = lo + next(i for i, a in enumerate(block) if len(a) != length)
            raise RecFlowFormatError(
                f"{files.history}: request {rids[bad]}: history has shape {np.shape(seqs[bad])}, expected "
                f"({length}, {width}) like the day's other requests (columns {SEQ_COLUMNS})"
            )
        rows = flat.reshape(len(block), length, width)
        for c in HISTORY_COLUMNS:
            out[c][lo : lo + len(block)] = rows[:, :, SEQ_COLUMNS.index(c)]
    return out


def _load_dict(path: Path, what: str) -> dict:
    obj = _load_pickle(path, what)
    if not isinstance(obj, dict):
        raise RecFlowFormatError(f"{path}: expected a dict keyed by request_id, got {type(obj).__name__}")
    return obj


def _lookup_requests(table: dict, rids: list, path: Path, feather_path: Path) -> list:
    """``[table[r] for r in rids]``; a missing request raises naming the file and the request id."""
    try:
        return [table[x] for x in rids]
    except KeyError:
        absent = [x for x in rids if x not in table]
        raise RecFlowFormatError(
            f"{path}: request_id {absent[0]} (in {feather_path.name}) missing; "
            f"{len(absent)} of {len(rids)} requests missing"
        ) from None


def _make_day(
    fd: _FeatherDay,
    items: dict[str, np.ndarray],
    counts: np.ndarray,
    history: dict[str, np.ndarray],
    files: DayFiles,
    spec: FunnelSpec,
) -> tuple[RecFlowDay, int]:
    """Look up the top group's rank index and bundle a :class:`RecFlowDay`; returns it and the misses."""
    top_video = items["video_id"][:, :GROUP_SIZE]
    top_valid = np.arange(GROUP_SIZE)[None, :] < counts[:, :1]
    top_rank_index, misses = _lookup_top_index(fd, top_video, top_valid)
    if misses:
        logger.warning(
            "%s: %d %s video(s) have no %s row with %s == 1; they get rank index %d (as the release does)",
            files.day, misses, spec.groups[0], files.feather.name, spec.top_flag, MISSING_RANK_INDEX,
        )  # fmt: skip
    day = RecFlowDay(
        name=files.day,
        request_id=fd.request_id,
        request_timestamp=fd.columns["request_timestamp"],
        user={f: fd.columns[f] for f in USER_FIELDS},
        items=items,
        counts=counts,
        top_rank_index=top_rank_index,
        history=history,
        sources={"user": str(files.feather), "item": str(files.requests), "history": str(files.history)},
    )
    return day, misses


def _read_day(files: DayFiles, spec: FunnelSpec) -> tuple[RecFlowDay, int]:
    """Read one day of the published layout into a :class:`RecFlowDay`; returns it and the lookup misses.

    The pickles are loaded one after the other (each is released before the next is read).
    """
    fd = _read_requests(files.feather, spec)
    items, counts = _gather_flows(fd, _load_dict(files.requests, "request flows"), files, spec)
    history = _gather_history(fd, _load_dict(files.history, "history"), files)
    return _make_day(fd, items, counts, history, files, spec)


def shuffled_store_arrays(day: RecFlowDay, spec: FunnelSpec, schema: DatasetSchema) -> dict[str, np.ndarray]:
    """:func:`to_store_arrays` (in place: consumes ``day``) with the candidate slots shuffled by the day's
    seeded generator."""
    arrays = to_store_arrays(day, spec, schema, inplace=True)
    shuffle_candidates(arrays, spec.num_candidates, day_shuffle_rng(day.name))
    return arrays


# ------------------------------------------------------------------------------------------------------
# output folder handling and progress
# ------------------------------------------------------------------------------------------------------
@contextmanager
def day_progress(enabled: bool, total: int, description: str) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(day)``: a rich progress bar over days when ``enabled``, else a no-op."""
    if not enabled:
        yield lambda day: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[day]}"),
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total, day="")
        yield lambda day: bar.update(task, advance=1, day=day)


# ------------------------------------------------------------------------------------------------------
# the converter
# ------------------------------------------------------------------------------------------------------
def convert_recflow(
    src: Path,
    out: Path,
    *,
    stages: int = 2,
    days: Sequence[str] | None = None,
    test_days: int = 1,
    valid_days: int = 0,
    progress: bool = False,
) -> DatasetSchema:
    """Convert RecFlow's published files into a store dataset, one partition per day.

    LCRON protocol: ``days=parse_days("2024-01-13..2024-02-04")``, ``test_days=1`` (train on 2024-01-13 ...
    2024-02-03, test on 2024-02-04).

    Args:
        src: RecFlow folder holding ``all_stage/``, ``request_id_dict/``, ``seq_effective_50_dict/``, ``others/``.
        out: dataset folder to write (replaced atomically if it holds a previous dataset).
        stages: 2 (4 groups x 10 candidates) or 3 (5 groups x 10).
        days: the days to convert, in time order (file stems; ``"A..B"`` ranges accepted, see
            :func:`parse_days`); default every ``all_stage/*.feather`` day, sorted.
        test_days: the last ``test_days`` days are test partitions.
        valid_days: the ``valid_days`` days before them are validation partitions; the rest train.
        progress: show a progress bar over days.

    Returns:
        The written :class:`DatasetSchema`.

    Raises:
        RecFlowFormatError: a missing day file or ``id_cnt.pkl``, a truncated or corrupt file, a missing
            column or id_cnt key, a request missing from a pickle, an array of the wrong width, an id outside
            its vocabulary. The message names the file and the field. Nothing is written then.
        ValueError: bad ``stages``, ``days``, ``test_days``/``valid_days``, or ``out`` is ``src`` or an
            unrelated non-empty folder.
    """
    spec = funnel_spec(stages)
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise RecFlowFormatError(f"src={str(src)!r}: RecFlow folder missing")
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"out={str(out)!r} would replace the source folder {str(src)!r}")
    day_list = parse_days(days) if days is not None else list_days(src)
    if not day_list:
        raise RecFlowFormatError(f"{src / FEATHER_DIR}: no <day>.feather file")
    roles = assign_roles(day_list, test_days, valid_days)
    files = [DayFiles.of(src, d) for d in day_list]
    for f in files:  # fail before any work
        f.check_exist()
    id_cnt = read_id_cnt(src / ID_CNT_FILE)

    partitions: list[Partition] = []
    stats: dict[str, dict[str, int]] = {}
    history_length: int | None = None
    with staged_directory(out, marker=SCHEMA_FILE) as tmp, day_progress(progress, len(files), "recflow") as advance:
        for f, role in zip(files, roles):
            day, misses = _read_day(f, spec)
            length = day.history["video_id"].shape[1]
            if history_length is None:
                history_length = length
            elif length != history_length:
                raise RecFlowFormatError(f"{f.history}: history length {length}, earlier days have {history_length}")
            part = day_partition(f.day, role, day.num_requests)
            schema = recflow_schema(stages=stages, id_cnt=id_cnt, history_length=history_length, partitions=[part])
            write_partition(tmp, schema, part, shuffled_store_arrays(day, spec, schema))
            partitions.append(part)
            stats[f.day] = {"requests": day.num_requests, "rank_index_misses": misses}
            logger.info("%s: %d requests (%s)", f.day, day.num_requests, role)
            advance(f.day)
        schema = recflow_schema(
            stages=stages,
            id_cnt=id_cnt,
            history_length=history_length or 0,
            partitions=partitions,
            provenance={
                "source": "RecFlow published files (Liu et al. 2024, arXiv 2410.20868)",
                "src": str(src),
                "converter_version": DATASET_VERSION,
                "stages": stages,
                "groups": list(spec.groups),
                "group_size": GROUP_SIZE,
                "labels": f"{RANK_INDEX_BASE} - {spec.top_index} for {spec.groups[0]}, then {list(spec.lower_labels)}",
                "time_zone": "UTC",
                "id_cnt": id_cnt,
                "days": stats,
            },
        )
        write_schema(tmp, schema)
    logger.info("recflow: wrote %d day(s) to %s", len(partitions), out)
    return schema

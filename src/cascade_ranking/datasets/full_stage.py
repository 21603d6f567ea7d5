"""Full-stage cascade datasets built from an interaction log (RankTower's full-stage sampling).

Yan & Li (2023), *RankTower*, Sec. 4.1 and 5.1, turn a plain rating log into cascade-ranking requests: each
request holds the items the user actually rated (*impression samples*) plus negatives that a simulated
production funnel retrieved but the user never rated (*candidate samples* and *random samples*). This module
builds such a dataset from any :class:`InteractionLog` (user, item, rating, timestamp + categorical user and
item attributes) and writes it into the request-list store (:mod:`cascade_ranking.data.store`).

**Requests.** A user's ratings are sorted by time (ties broken by item id; a repeated (user, item) pair keeps
its earliest rating) and cut into consecutive chunks of ``group_size`` (10) ratings; one chunk is one
request. A user's final partial chunk (fewer than ``group_size`` ratings) forms no request: its ratings
are in no request's impressions, but they stay in the user's exclusion set (below). A request's time is its
first rating's timestamp.

**Candidates** (N = ``(stages + 2) * group_size``): one group of ``group_size`` per funnel position.

* the top position (``stages + 1``: ``rank_pos`` / ``rerank_pos``) holds the impressions: the chunk's items;
* every lower position holds ``group_size`` negatives from one *source* of the simulated funnel, the
  hardest source at the highest position (``negative_sources``, highest position first). Sources, all
  sampling without replacement among items the user has never rated (at any time) and not yet chosen for
  the request:

  - ``"cooccurrence"``: the items that co-occur most with the request's history, score
    ``s(i) = sum_{h in history} C[h, i]`` with ``C = X^T X`` (``X`` = binary user x item matrix), ties broken
    by popularity, then at random; with an empty history this is the most popular unrated items;
  - ``"popularity"``: items drawn in proportion to ``count(i) + 1`` (Gumbel-top-k: the k largest
    ``log w_i + Gumbel`` keys are a draw without replacement with weights ``w``);
  - ``"uniform"``: items drawn uniformly (the k largest uniform random keys).

  A source named twice continues down its own ranking (the same keys): its second group holds its ranks
  ``group_size + 1 .. 2 * group_size``. Two-stage default ``("cooccurrence", "popularity", "uniform")`` at
  positions 2, 1, 0; three-stage default ``("cooccurrence", "popularity", "popularity", "uniform")`` at
  positions 3, 2, 1, 0. (Two co-occurrence groups instead make popularity alone worse than random on
  MovieLens-100K, 0.21 against 0.39 joint recall, so the benchmark would reward anti-popularity.)

**No leakage.** Requests are grouped into weeks (Monday 00:00 UTC to Sunday 24:00 UTC). The funnel's models
for week ``w`` — the popularity counts and the co-occurrence matrix ``C`` — are fitted on interactions with a
timestamp before week ``w`` starts, and nothing else, so train, validation and test requests are built the
same way (rolling). The query of the co-occurrence source is the request's own history, which precedes the
request. The exclusion set (items the user ever rated) is the only use of the future, and it only removes
items. The random draws of week ``w`` come from a generator seeded by ``(seed, w)``, so the negatives of a
week do not depend on other weeks' requests. No feature says which source chose a candidate.

**Labels** (float32): a negative at funnel position ``p`` has label ``p + 1``; an impression at the top
position ``T`` has label ``T + grade`` where ``grade`` in ``1..K`` is the rank of its rating among the log's
distinct rating values, so every impression is above every negative and impressions are graded by rating.
Ground truth = the top ``gt_num = group_size`` by label = the impressions.

**Features.** user: ``user_id`` and the log's user attributes; context: ``weekday`` (1 = Monday ... 7) and
``hour`` (1 + hour of day), both UTC, of the request time; history: the request's previous
``history_length`` (50) ratings of the same user, **most recent first, left-aligned** (slot 0 = the latest
rating before the request, padding 0 at the end), fields ``history_fields`` (``item_id`` first; each shares
the table of the item field of the same name); item: ``item_id`` and the log's item attributes. Id 0 means
padding/unknown everywhere.

**Partitions.** One Parquet file per week from the first to the last request's week (empty weeks give empty
files); the last ``test_weeks`` are ``test``, the ``valid_weeks`` before them ``valid``, the rest ``train``.
Rows are in (request time, user) order; ``request_id`` numbers the requests in that order from 0.
Candidate slots are written in a seeded random order (the loader shuffles again). The same log, config and
seed give byte-identical files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..data.atomic import check_replaceable, staged_directory
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
    "CONSTRUCTION",
    "FUNNEL_POSITIONS",
    "Attribute",
    "FullStageConfig",
    "FunnelState",
    "InteractionLog",
    "RequestTable",
    "build_full_stage",
    "funnel_state",
    "funnel_states",
    "make_requests",
    "sample_negatives",
    "week_of",
    "week_start_date",
    "week_start_seconds",
]

logger = logging.getLogger(__name__)

#: Identifies the negative-sampling construction this module implements (stored in the provenance).
CONSTRUCTION = "full-stage-v1"

#: Funnel position names (index = the stored ``stage`` integer) by number of cascade stages.
FUNNEL_POSITIONS: dict[int, list[str]] = {
    2: ["prerank_neg", "coarse_neg", "rank_neg", "rank_pos"],
    3: ["prerank_neg", "coarse_neg", "rank_neg", "rerank_neg", "rerank_pos"],
}

_SOURCES = ("cooccurrence", "popularity", "uniform")
_DEFAULT_SOURCES: dict[int, tuple[str, ...]] = {
    2: ("cooccurrence", "popularity", "uniform"),
    3: ("cooccurrence", "popularity", "popularity", "uniform"),
}

_SECONDS_PER_DAY = 86_400
_WEEKDAY_OF_EPOCH = 3  # 1970-01-01 was a Thursday (Monday = 0)
_EPOCH_MONDAY = np.datetime64("1969-12-29", "D")  # the Monday starting week 0
_BLOCK_ROWS = 2048  # requests scored at once (bounds the dense [rows, items] matrices)


# ------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------
class Attribute(NamedTuple):
    """A categorical attribute of users or items.

    Attributes:
        values: ``[num_entities + 1]`` int64 ids in ``[0, vocab_size)``; row ``e`` is entity ``e``'s id and
            row 0 (the padding entity) holds 0. Id 0 means unknown.
        vocab_size: number of ids including 0.
        description: what the ids mean (stored in ``schema.json``).
    """

    values: np.ndarray
    vocab_size: int
    description: str = ""


@dataclass(frozen=True)
class InteractionLog:
    """A rating log with dense ids and categorical attribute tables.

    Attributes:
        user: ``[R]`` int64 user ids in ``[1, num_users]``.
        item: ``[R]`` int64 item ids in ``[1, num_items]``.
        rating: ``[R]`` float64 ratings (any scale; only their order matters).
        timestamp: ``[R]`` int64 Unix seconds (UTC).
        num_users: number of users (ids ``1..num_users``; 0 is padding).
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        user_features: attribute name -> :class:`Attribute` with ``num_users + 1`` rows.
        item_features: attribute name -> :class:`Attribute` with ``num_items + 1`` rows.
        source: where the log came from (used in error messages).

    Raises:
        ValueError: on construction, naming the field: mismatched lengths, ids out of range, non-finite
            ratings, attribute tables of the wrong length or with ids outside their vocabulary, or attribute
            names that clash with ``user_id`` / ``item_id``.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    num_users: int
    num_items: int
    user_features: dict[str, Attribute] = field(default_factory=dict)
    item_features: dict[str, Attribute] = field(default_factory=dict)
    source: str = "interaction log"

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("user", "item", "rating", "timestamp"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != 1 or len(a) != n:
                raise ValueError(f"{self.source}: {name!r} must be a 1-d array of length {n} (like 'user')")
        if n == 0:
            raise ValueError(f"{self.source}: the log holds no interactions")
        for name, top in (("user", self.num_users), ("item", self.num_items)):
            a = getattr(self, name)
            if a.dtype.kind not in "iu" or a.min() < 1 or a.max() > top:
                raise ValueError(f"{self.source}: {name!r} ids must be integers in [1, {top}] (num_{name}s)")
        if self.timestamp.dtype.kind not in "iu":
            raise ValueError(f"{self.source}: 'timestamp' must hold integer Unix seconds")
        if self.rating.dtype.kind != "f" or not np.isfinite(self.rating).all():
            raise ValueError(f"{self.source}: 'rating' must hold finite floats")
        for kind, table, rows in (
            ("user_features", self.user_features, self.num_users + 1),
            ("item_features", self.item_features, self.num_items + 1),
        ):
            for name, attr in table.items():
                if name in {"user_id", "item_id"}:
                    raise ValueError(f"{self.source}: {kind}[{name!r}] clashes with the id field of that name")
                v = attr.values
                if not isinstance(v, np.ndarray) or v.shape != (rows,) or v.dtype.kind not in "iu":
                    raise ValueError(f"{self.source}: {kind}[{name!r}] must be an integer array of shape ({rows},)")
                if v[0] != 0 or v.min() < 0 or v.max() >= attr.vocab_size:
                    raise ValueError(
                        f"{self.source}: {kind}[{name!r}] ids must lie in [0, {attr.vocab_size}) with row 0 = 0"
                    )

    def select(self, rows: np.ndarray) -> InteractionLog:
        """Return the log restricted to ``rows`` (a bool mask or an index array); tables are kept whole."""
        return InteractionLog(
            user=self.user[rows],
            item=self.item[rows],
            rating=self.rating[rows],
            timestamp=self.timestamp[rows],
            num_users=self.num_users,
            num_items=self.num_items,
            user_features=self.user_features,
            item_features=self.item_features,
            source=self.source,
        )


@dataclass(frozen=True)
class FullStageConfig:
    """How the full-stage dataset is laid out (see the module docstring).

    Attributes:
        stages: cascade stages, 2 or 3 (4 or 5 funnel groups).
        group_size: candidates per funnel group = ratings per request = ``gt_num``.
        history_length: L, history slots per request.
        history_fields: item fields the history holds, ``item_id`` first.
        negative_sources: one source per negative group, highest funnel position first (``None`` = the
            default for ``stages``).
        test_weeks: number of final weeks with role ``test``.
        valid_weeks: number of weeks before them with role ``valid``.
    """

    stages: int = 2
    group_size: int = 10
    history_length: int = 50
    history_fields: tuple[str, ...] = ("item_id",)
    negative_sources: tuple[str, ...] | None = None
    test_weeks: int = 4
    valid_weeks: int = 2

    def __post_init__(self) -> None:
        if self.stages not in FUNNEL_POSITIONS:
            raise ValueError(f"stages={self.stages}: supported values are {sorted(FUNNEL_POSITIONS)}")
        for name in ("group_size", "test_weeks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("history_length", "valid_weeks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be non-negative")
        if not self.history_fields or self.history_fields[0] != "item_id":
            raise ValueError(f"history_fields={self.history_fields}: must start with 'item_id'")
        sources = self.sources
        if len(sources) != self.stages + 1 or any(s not in _SOURCES for s in sources):
            raise ValueError(
                f"negative_sources={self.negative_sources}: expected {self.stages + 1} names "
                f"(one per negative group, highest position first) from {_SOURCES}"
            )

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.negative_sources) if self.negative_sources is not None else _DEFAULT_SOURCES[self.stages]

    @property
    def num_groups(self) -> int:
        return self.stages + 2

    @property
    def num_candidates(self) -> int:
        return self.num_groups * self.group_size

    @property
    def keep(self) -> list[int]:
        """Stage i keeps all but ``(i + 1)`` groups: two-stage [30, 20], three-stage [40, 30, 20]."""
        return [self.num_candidates - (i + 1) * self.group_size for i in range(self.stages)]


# ------------------------------------------------------------------------------------------------------
# time
# ------------------------------------------------------------------------------------------------------
def week_of(timestamp: np.ndarray) -> np.ndarray:
    """Week number (weeks start Monday 00:00 UTC; week 0 starts 1969-12-29) of Unix-second timestamps."""
    days = np.floor_divide(np.asarray(timestamp, dtype=np.int64), _SECONDS_PER_DAY)
    return np.floor_divide(days + _WEEKDAY_OF_EPOCH, 7)


def week_start_seconds(week: int) -> int:
    """Unix seconds of the Monday 00:00 UTC that starts ``week``."""
    return int((7 * int(week) - _WEEKDAY_OF_EPOCH) * _SECONDS_PER_DAY)


def week_start_date(week: int) -> str:
    """ISO date (UTC) of the Monday that starts ``week``."""
    return str(_EPOCH_MONDAY + np.timedelta64(7 * int(week), "D"))


def _weekday_hour(timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC weekday (1 = Monday ... 7 = Sunday) and ``1 + hour`` (1..24) of Unix seconds; vectorized."""
    ts = np.asarray(timestamp, dtype=np.int64)
    days = np.floor_divide(ts, _SECONDS_PER_DAY)
    weekday = np.mod(days + _WEEKDAY_OF_EPOCH, 7) + 1
    hour = np.floor_divide(np.mod(ts, _SECONDS_PER_DAY), 3600) + 1
    return weekday, hour


# ------------------------------------------------------------------------------------------------------
# requests
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestTable:
    """The requests cut from a log, in (time, user) order.

    Attributes:
        user: ``[R]`` int64 user ids.
        time: ``[R]`` int64 request time (the first rating's timestamp).
        week: ``[R]`` int64 week number of ``time``.
        chunk: ``[R]`` int64 index of the chunk among the user's chunks (0 = the user's first ratings).
        items: ``[R, S]`` int64 the chunk's items, in time order.
        grade: ``[R, S]`` int64 rating grade of each item (1 = lowest distinct rating value).
        history: ``[R, L]`` int64 previous items of the user, most recent first, 0-padded at the end.
        rated: ``[U + 1, I + 1]`` bool CSR matrix, ``rated[u, i]`` = user ``u`` ever rated item ``i``.
        dropped: number of ratings in users' final partial chunks (not in any request).
    """

    user: np.ndarray
    time: np.ndarray
    week: np.ndarray
    chunk: np.ndarray
    items: np.ndarray
    grade: np.ndarray
    history: np.ndarray
    rated: sp.csr_matrix
    dropped: int

    @property
    def num_requests(self) -> int:
        return len(self.user)


def _sorted_log(log: InteractionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (user, time, item) and keep each (user, item) pair's earliest rating."""
    order = np.lexsort((log.item, log.timestamp, log.user))
    user, item = log.user[order].astype(np.int64), log.item[order].astype(np.int64)
    ts, rating = log.timestamp[order].astype(np.int64), log.rating[order]
    _, first = np.unique(user * (log.num_items + 1) + item, return_index=True)
    if len(first) < len(user):
        logger.info("%s: %d repeated (user, item) ratings dropped", log.source, len(user) - len(first))
        keep = np.sort(first)
        user, item, ts, rating = user[keep], item[keep], ts[keep], rating[keep]
    return user, item, ts, rating


def make_requests(log: InteractionLog, *, group_size: int = 10, history_length: int = 50) -> RequestTable:
    """Cut every user's time-ordered ratings into requests of ``group_size`` consecutive ratings.

    See the module docstring for the rules (ties, repeated pairs, dropped partial chunks, history order).
    Vectorized: no per-user or per-request Python.
    """
    user, item, ts, rating = _sorted_log(log)
    n = len(user)
    counts = np.bincount(user, minlength=log.num_users + 1)
    user_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n, dtype=np.int64) - user_start[user]  # position of the rating in its user's sequence
    first = np.flatnonzero((rank % group_size == 0) & (rank + group_size <= counts[user]))
    first = first[np.lexsort((user[first], ts[first]))]  # (time, user) order
    offsets = np.arange(group_size, dtype=np.int64)
    rows = first[:, None] + offsets
    _, grade = np.unique(rating, return_inverse=True)
    back = np.arange(1, history_length + 1, dtype=np.int64)
    hist_rows = first[:, None] - back
    hist_valid = rank[first][:, None] - back >= 0
    history = np.where(hist_valid, item[np.maximum(hist_rows, 0)], 0)
    rated = sp.csr_matrix(
        (np.ones(n, dtype=bool), (user, item)), shape=(log.num_users + 1, log.num_items + 1), dtype=bool
    )
    return RequestTable(
        user=user[first],
        time=ts[first],
        week=week_of(ts[first]),
        chunk=rank[first] // group_size,
        items=item[rows],
        grade=grade.reshape(-1)[rows].astype(np.int64) + 1,
        history=history.astype(np.int64),
        rated=rated,
        dropped=int(n - len(first) * group_size),
    )


# ------------------------------------------------------------------------------------------------------
# the simulated funnel
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FunnelState:
    """The funnel's models for one week, fitted on interactions before ``cutoff`` (Unix seconds).

    Attributes:
        cutoff: only interactions with ``timestamp < cutoff`` were used.
        popularity: ``[I + 1]`` int64 rating counts (entry 0 = 0).
        cooccurrence: ``[I + 1, I + 1]`` float32 dense ``X^T X``: number of users who rated both items (the
            diagonal holds each item's count; it never matters, since history items are never candidates).
            Dense, so memory grows as ``I^2`` (11 MB for MovieLens-100K, 55 MB for 3,700 items).
    """

    cutoff: int
    popularity: np.ndarray
    cooccurrence: np.ndarray


def _binary(user: np.ndarray, item: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(user), dtype=np.float32), (user, item)), shape=shape)


def funnel_state(log: InteractionLog, cutoff: int) -> FunnelState:
    """Fit the funnel's popularity counts and co-occurrence matrix on the log's interactions before ``cutoff``.

    Computed from scratch; :func:`funnel_states` computes the same states incrementally, week after week.
    """
    user, item, ts, _ = _sorted_log(log)
    past = ts < cutoff
    x = _binary(user[past], item[past], (log.num_users + 1, log.num_items + 1))
    popularity = np.bincount(item[past], minlength=log.num_items + 1).astype(np.int64)
    return FunnelState(cutoff=int(cutoff), popularity=popularity, cooccurrence=(x.T @ x).toarray())


def funnel_states(log: InteractionLog, weeks: Iterable[int]) -> Iterator[FunnelState]:
    """Yield :func:`funnel_state` ``(log, start of week)`` for increasing ``weeks``, updating incrementally.

    With ``D`` the interactions added since the previous week, ``X' = X + D`` and
    ``X'^T X' = X^T X + X^T D + D^T X'``; only the new rows are multiplied.
    """
    user, item, ts, _ = _sorted_log(log)
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    shape = (log.num_users + 1, log.num_items + 1)
    x = _binary(user[:0], item[:0], shape)
    cooc = np.zeros((shape[1], shape[1]), dtype=np.float32)
    popularity = np.zeros(shape[1], dtype=np.int64)
    done, last = 0, None
    for week in weeks:
        if last is not None and week <= last:
            raise ValueError(f"weeks must increase; got {week} after {last}")
        last = week
        cutoff = week_start_seconds(week)
        upto = int(np.searchsorted(ts_sorted, cutoff, side="left"))
        if upto > done:
            new = order[done:upto]
            d = _binary(user[new], item[new], shape)
            x_new = x + d
            cooc += (x.T @ d + d.T @ x_new).toarray()
            popularity += np.bincount(item[new], minlength=shape[1])
            x, done = x_new, upto
        yield FunnelState(cutoff=cutoff, popularity=popularity.copy(), cooccurrence=cooc.copy())


def _top_k(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``[B, k]`` of each row's k largest keys (descending) and whether each is a real pick."""
    k = min(k, keys.shape[1])
    idx = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(keys, idx, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    return idx, np.isfinite(np.take_along_axis(keys, idx, axis=1))


def sample_negatives(
    users: np.ndarray,
    history: np.ndarray,
    state: FunnelState,
    rated: sp.csr_matrix,
    sources: Sequence[str],
    group_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one group of negatives per source for a block of requests.

    Args:
        users: ``[B]`` int64 user ids.
        history: ``[B, L]`` int64 history items (0 = padding); the co-occurrence query.
        state: the funnel's models for the requests' week.
        rated: ``[U + 1, I + 1]`` bool CSR, items each user ever rated (never drawn).
        sources: source names, hardest first (one group each).
        group_size: negatives per group.
        rng: generator for Gumbel keys and tie breaks (consumed in a fixed order).

    Returns:
        ``items [B, G * group_size]`` int64 (group g in columns ``g*group_size ...``) and ``valid`` bool of
        the same shape (False where a user has too few unrated items left; those items are 0).
    """
    b = len(users)
    num_items = rated.shape[1]
    blocked = rated[users].toarray()
    blocked[:, 0] = True  # the padding item
    pop = state.popularity.astype(np.float64)
    source_keys: dict[str, np.ndarray] = {}  # a repeated source continues down its own ranking
    out_items, out_valid = [], []
    for source in sources:
        if source not in source_keys:
            noise = rng.random((b, num_items))
            if source == "cooccurrence":
                h_rows = np.repeat(np.arange(b), history.shape[1])
                h_items = history.reshape(-1)
                keep = h_items > 0
                h = _binary(h_rows[keep], h_items[keep], (b, num_items))
                # exact lexicographic key: co-occurrence count, then popularity, then a random tie break
                score = np.asarray(h @ state.cooccurrence, dtype=np.float64)
                source_keys[source] = score * (pop.max() + 1.0) + pop + noise
            elif source == "popularity":  # Gumbel-top-k with weights count + 1
                source_keys[source] = np.log(pop + 1.0) - np.log(-np.log(noise + np.finfo(np.float64).tiny))
            else:  # uniform
                source_keys[source] = noise
        keys = source_keys[source]
        keys = np.where(blocked, -np.inf, keys)
        idx, valid = _top_k(keys, group_size)
        np.put_along_axis(blocked, idx, True, axis=1)
        out_items.append(np.where(valid, idx, 0))
        out_valid.append(valid)
    return np.concatenate(out_items, axis=1).astype(np.int64), np.concatenate(out_valid, axis=1)


# ------------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------------
def _week_rng(seed: int, week: int, stream: int) -> np.random.Generator:
    """The generator of one week's draws: seeded by (seed, week, stream) only (week shifted non-negative)."""
    return np.random.default_rng([int(seed), int(week) + 2**31, int(stream)])


def _roles(num_weeks: int, config: FullStageConfig) -> list[PartitionRole]:
    if num_weeks <= config.test_weeks + config.valid_weeks:
        raise ValueError(
            f"the log spans {num_weeks} weeks with requests; test_weeks={config.test_weeks} + "
            f"valid_weeks={config.valid_weeks} leave no training week"
        )
    n_train = num_weeks - config.test_weeks - config.valid_weeks
    return roles_in_time_order(n_train, config.valid_weeks, config.test_weeks)


def _schema_features(log: InteractionLog) -> list[CategoricalField]:
    feats = [CategoricalField(name="user_id", role="user", vocab_size=log.num_users + 1, description="user id")]
    feats += [
        CategoricalField(name=n, role="user", vocab_size=a.vocab_size, description=a.description)
        for n, a in log.user_features.items()
    ]
    feats += [
        CategoricalField(name="weekday", role="context", vocab_size=8, description="UTC weekday, 1=Monday..7"),
        CategoricalField(name="hour", role="context", vocab_size=25, description="1 + UTC hour of day"),
        CategoricalField(name="item_id", role="item", vocab_size=log.num_items + 1, description="item id"),
    ]
    feats += [
        CategoricalField(name=n, role="item", vocab_size=a.vocab_size, description=a.description)
        for n, a in log.item_features.items()
    ]
    return feats


def _item_column(log: InteractionLog, name: str, items: np.ndarray) -> np.ndarray:
    return items if name == "item_id" else log.item_features[name].values[items]


def build_full_stage(
    log: InteractionLog,
    out_dir: str | Path,
    *,
    name: str,
    seed: int = 0,
    config: FullStageConfig | None = None,
    train_defaults: TrainDefaults | None = None,
    provenance: dict | None = None,
) -> DatasetSchema:
    """Build the full-stage cascade dataset of ``log`` and write it to ``out_dir``.

    The dataset is assembled in a temporary folder beside ``out_dir`` and moved into place at the end, so a
    failure never leaves partial output; an existing dataset at ``out_dir`` (a folder with ``schema.json``)
    is replaced, any other non-empty folder is refused.

    Args:
        log: the interaction log and attribute tables.
        out_dir: the dataset folder to write.
        name: dataset name stored in the schema (e.g. ``"movielens-100k-v1-2stage"``).
        seed: non-negative seed of every random draw (same log + config + seed = byte-identical files).
        config: layout; defaults to :class:`FullStageConfig()`.
        train_defaults: the dataset's training defaults (schema ``train_defaults``).
        provenance: extra facts stored in the schema's provenance (e.g. the source and its counts).

    Returns:
        The written :class:`DatasetSchema`.

    Raises:
        ValueError: ``seed`` is negative, a history field is not an item attribute of ``log``, the log spans
            too few weeks for the test and validation weeks, or ``out_dir`` is a non-empty folder that is
            not a dataset.
    """
    config = config or FullStageConfig()
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed={seed}: must be a non-negative integer")
    unknown = [f for f in config.history_fields[1:] if f not in log.item_features]
    if unknown:
        raise ValueError(
            f"history_fields={config.history_fields}: {unknown} are not item attributes of {log.source} "
            f"(item attributes: {sorted(log.item_features)})"
        )
    out_dir = Path(out_dir)
    check_replaceable(out_dir, SCHEMA_FILE, what="out_dir")

    req = make_requests(log, group_size=config.group_size, history_length=config.history_length)
    if req.num_requests == 0:
        raise ValueError(f"{log.source}: no user has {config.group_size} ratings, so there is no request")
    weeks = np.arange(req.week.min(), req.week.max() + 1)
    roles = _roles(len(weeks), config)
    s, n = config.group_size, config.num_candidates

    schema = DatasetSchema(
        name=name,
        features=_schema_features(log),
        history=[HistoryField(name=f, item_field=f) for f in config.history_fields],
        history_length=config.history_length,
        num_candidates=n,
        funnel_positions=FUNNEL_POSITIONS[config.stages],
        keep=config.keep,
        gt_num=s,
        partitions=[],
        train_defaults=train_defaults or TrainDefaults(),
        provenance={
            "construction": CONSTRUCTION,
            "seed": int(seed),
            "stages": config.stages,
            "group_size": s,
            "history_length": config.history_length,
            "negative_sources": list(config.sources),
            "weeks": "Monday 00:00 UTC to Sunday 24:00 UTC; a request's time is its first rating's timestamp",
            "funnel_fit": "popularity and co-occurrence use only interactions before the request's week",
            "labels": "negative: position + 1; impression: top position + rating grade (1 = lowest rating)",
            "history_order": "most recent first, left-aligned, 0-padded",
            "requests": req.num_requests,
            "ratings_in_requests": req.num_requests * s,
            "ratings_dropped_in_partial_chunks": req.dropped,
            **(provenance or {}),
        },
    )
    partitions: list[Partition] = []
    with staged_directory(out_dir) as tmp:
        for week, role, state in zip(weeks, roles, funnel_states(log, weeks)):
            arrays = _week_arrays(log, req, config, state, np.flatnonzero(req.week == week), seed, week)
            start = week_start_date(week)
            part = Partition(
                name=f"week-{start}",
                role=role,
                num_requests=len(arrays["request_id"]),
                start=start,
                end=str(np.datetime64(start) + np.timedelta64(6, "D")),
            )
            write_partition(tmp, schema, part, arrays)
            partitions.append(part)
        schema = schema.model_copy(update={"partitions": partitions})
        write_schema(tmp, schema)
    logger.info("%s: wrote %d requests in %d weekly partitions to %s", name, req.num_requests, len(partitions), out_dir)
    return schema


def _week_arrays(
    log: InteractionLog,
    req: RequestTable,
    config: FullStageConfig,
    state: FunnelState,
    rows: np.ndarray,
    seed: int,
    week: int,
) -> dict[str, np.ndarray]:
    """The store columns of the requests ``rows`` (all in ``week``)."""
    s, n, top = config.group_size, config.num_candidates, config.num_groups - 1
    # funnel position of each slot before shuffling: impressions, then negative groups top-down
    slot_stage = np.repeat(np.arange(top, -1, -1, dtype=np.int8), s)
    rng = _week_rng(seed, week, 0)
    neg_items, neg_valid = [np.zeros((0, n - s), np.int64)], [np.zeros((0, n - s), bool)]
    for lo in range(0, len(rows), _BLOCK_ROWS):
        blk = rows[lo : lo + _BLOCK_ROWS]
        it, va = sample_negatives(req.user[blk], req.history[blk], state, req.rated, config.sources, s, rng)
        neg_items.append(it)
        neg_valid.append(va)
    b = len(rows)
    items = np.concatenate([req.items[rows], np.concatenate(neg_items)], axis=1)
    mask = np.concatenate([np.ones((b, s), bool), np.concatenate(neg_valid)], axis=1)
    stage = np.broadcast_to(slot_stage, (b, n))
    label = np.concatenate(
        [top + req.grade[rows], np.broadcast_to(slot_stage[s:].astype(np.int64) + 1, (b, n - s))], axis=1
    ).astype(np.float32)
    perm = np.argsort(_week_rng(seed, week, 1).random((b, n)), axis=1)
    items, mask, stage, label = (np.take_along_axis(a, perm, axis=1) for a in (items, mask, stage, label))
    return request_columns(log, req, rows, config.history_fields, items, mask, stage, label)


def request_columns(
    log: InteractionLog,
    req: RequestTable,
    rows: np.ndarray,
    history_fields: tuple[str, ...],
    items: np.ndarray,
    mask: np.ndarray,
    stage: np.ndarray,
    label: np.ndarray,
) -> dict[str, np.ndarray]:
    """The store columns of requests ``rows`` with the given ``[b, N]`` candidate items, mask, stage, label
    (padded slots zeroed); user, context and history columns come from ``req`` and ``log``."""
    items = np.where(mask, items, 0)
    weekday, hour = _weekday_hour(req.time[rows])
    arrays: dict[str, np.ndarray] = {
        "request_id": rows.astype(np.int64),
        "user.user_id": req.user[rows],
        "context.weekday": weekday,
        "context.hour": hour,
        "mask": mask,
        "stage": np.where(mask, stage, 0).astype(np.int8),
        "label": np.where(mask, label, 0.0).astype(np.float32),
    }
    for fname, attr in log.user_features.items():
        arrays[f"user.{fname}"] = attr.values[req.user[rows]]
    arrays["item.item_id"] = items
    for fname in log.item_features:
        arrays[f"item.{fname}"] = _item_column(log, fname, items)
    for fname in history_fields:
        arrays[f"history.{fname}"] = _item_column(log, fname, req.history[rows])
    return arrays

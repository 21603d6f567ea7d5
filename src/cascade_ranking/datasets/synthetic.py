"""A seeded simulation of a production recommendation funnel, written as RecFlow files or as our store.

The world (:func:`build_world`): users with attributes (device, age, gender, province), three favourite
second-level categories and a latent factor (the mean of their favourite categories' factors plus noise);
items with an author, a second-level category (and its first-level parent), an upload type, an upload time,
a duration, a latent factor (category + author + noise) and a popularity rank (the item of rank ``k`` of ``I``
is drawn with density proportional to ``(k / I) ** (-1 / 3)``; users are drawn by activity the same way).

One request (:func:`simulate_days`, vectorized over chunks of requests): a user drawn by activity at a time
uniform over the day; a pool of ``pool_size`` distinct items drawn by popularity; true relevance
``u.v / scale + 0.5 z(log popularity) + noise``; then four noisy stage scorers in sequence, each scoring its
survivors with relevance plus Gaussian noise of decreasing width and keeping its top ``stage_keep[i]``:

    pool -> prerank (keeps 100) -> coarse (50) -> rank (20) -> rerank (10 shown)

An item's funnel position is the deepest stage it passed: ``prerank_neg`` (filtered by prerank),
``coarse_neg``, ``rank_neg``, ``rerank_neg`` (passed rank, filtered by rerank), ``rerank_pos`` (shown);
``rank_pos`` = passed rank (rerank_neg or rerank_pos). ``rank_index`` / ``rerank_index`` are the 0-based
positions in the rank / rerank stage's order. ``realshow`` is the first few shown items (a random number of
them), with ``effective_view`` drawn from the relevance. Every flow records a random subset of its items
(``flow_size`` items, clipped to what exists; realshow records all, in shown order) in random order, so
flows are sometimes shorter and sometimes longer than the 10 slots a converter keeps. The behaviour history
(50 rows, left-padded, oldest first, a random number valid) mixes items of the user's favourite categories
(70 %) and popular items.

Layouts (:func:`simulate`): ``"recflow"`` writes RecFlow's published layout (``all_stage/<day>.feather``,
``request_id_dict/<day>.pkl``, ``seq_effective_50_dict/<day>.pkl``, ``others/id_cnt.pkl``) so that
:mod:`.recflow` can be tested on files it did not write; ``"store"`` writes our store directly with the same
schema and the same arrays as converting those files (the same code assembles the columns). Days are
generated and written one at a time, in chunks of ``chunk_size`` requests, so memory is bounded by one day.
Every random draw comes from a generator seeded by ``(seed, day, chunk)``: the same seed gives byte-identical
files.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..data.atomic import staged_directory, write_text_atomic
from ..data.loader import shuffle_candidates
from ..data.schema import SCHEMA_FILE, DatasetSchema, Partition
from ..data.store import write_partition, write_schema
from .recflow import (
    FEATHER_DIR,
    FLOW_COLUMNS,
    FLOWS,
    GROUP_SIZE,
    HISTORY_COLUMNS,
    ID_CNT_FILE,
    ITEM_COLUMNS,
    REQUEST_DIR,
    SEQ_COLUMNS,
    SEQ_DIR,
    USER_FIELDS,
    RecFlowDay,
    assign_roles,
    day_partition,
    day_progress,
    day_shuffle_rng,
    funnel_spec,
    recflow_schema,
    to_store_arrays,
)

__all__ = ["SimulatedDay", "SimulatorConfig", "World", "build_world", "simulate", "simulate_days", "small_config"]

logger = logging.getLogger(__name__)

#: Funnel depth of a pool item: the number of stages it passed.
PRERANK_NEG, COARSE_NEG, RANK_NEG, RERANK_NEG, RERANK_POS = range(5)
_MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class SimulatorConfig:
    """Sizes and noise levels of the simulated world and funnel.

    Attributes:
        num_users, num_items, num_authors, num_devices: population sizes.
        num_cate_two, num_cate_one, num_upload_types, num_ages, num_genders, num_provinces: vocabularies.
        latent_dim: dimension of user/item factors.
        pool_size: items entering the funnel per request.
        stage_keep: items kept by prerank, coarse, rank, rerank (strictly decreasing, last = items shown).
        stage_noise: standard deviation of each stage scorer's noise (relevance has about unit scale).
        flow_size: (min, max) items recorded per flow, inclusive, clipped to the flow's size.
        history_length: rows of the behaviour history.
        start: ISO date (UTC) of the first day.
        chunk_size: requests simulated at once (bounds memory within a day).
    """

    num_users: int = 2_000
    num_items: int = 20_000
    num_authors: int = 1_000
    num_devices: int = 2_200
    num_cate_two: int = 120
    num_cate_one: int = 20
    num_upload_types: int = 6
    num_ages: int = 8
    num_genders: int = 3
    num_provinces: int = 34
    latent_dim: int = 8
    pool_size: int = 200
    stage_keep: tuple[int, int, int, int] = (100, 50, 20, 10)
    stage_noise: tuple[float, float, float, float] = (1.0, 0.7, 0.45, 0.25)
    flow_size: tuple[int, int] = (8, 16)
    history_length: int = 50
    start: str = "2024-01-13"
    chunk_size: int = 10_000

    def __post_init__(self) -> None:
        keep = self.stage_keep
        if len(keep) != 4 or any(b >= a for a, b in zip(keep, keep[1:])) or keep[-1] <= 0:
            raise ValueError(f"stage_keep={keep}: four strictly decreasing positive sizes are required")
        if keep[0] >= self.pool_size:
            raise ValueError(f"stage_keep[0]={keep[0]} must be < pool_size={self.pool_size}")
        if self.num_items < 2 * self.pool_size or self.num_items < self.num_cate_two:
            raise ValueError(f"num_items={self.num_items} must be >= 2 * pool_size and >= num_cate_two")
        if self.num_cate_one > self.num_cate_two:
            raise ValueError("num_cate_one must be <= num_cate_two")
        lo, hi = self.flow_size
        if not 0 < lo <= hi < self.pool_size - keep[0] or hi < keep[-1]:
            raise ValueError(
                f"flow_size={self.flow_size}: need 0 < min <= max, stage_keep[-1] <= max < pool_size - stage_keep[0]"
            )
        if len(self.stage_noise) != 4 or self.history_length <= 0 or self.chunk_size <= 0:
            raise ValueError("stage_noise needs 4 values; history_length and chunk_size must be positive")
        np.datetime64(self.start, "D")  # raises ValueError on a bad date

    @classmethod
    def for_requests(cls, requests: int, **overrides) -> SimulatorConfig:
        """Population sizes that grow with the number of requests (about 20 requests per user)."""
        users = int(np.clip(requests // 20, 100, 1_000_000))
        items = int(np.clip(requests // 4, 5_000, 2_000_000))
        sizes = {"num_users": users, "num_devices": users + users // 10, "num_items": items,
                 "num_authors": max(50, items // 20)}  # fmt: skip
        return cls(**{**sizes, **overrides})

    def id_cnt(self) -> dict[str, int]:
        """The RecFlow ``id_cnt.pkl`` of this world (published key spellings)."""
        return {
            "user_id": self.num_users, "device_id": self.num_devices, "age": self.num_ages,
            "gender": self.num_genders, "province": self.num_provinces, "video_id": self.num_items,
            "author_id": self.num_authors, "category_level_two": self.num_cate_two,
            "category_level_one": self.num_cate_one, "upload_type": self.num_upload_types,
        }  # fmt: skip

    def canonical_id_cnt(self) -> dict[str, int]:
        """:meth:`id_cnt` under the converter's canonical keys (see :func:`.recflow.read_id_cnt`)."""
        c = self.id_cnt()
        c["cate_two"], c["cate_one"] = c.pop("category_level_two"), c.pop("category_level_one")
        return c


@dataclass
class World:
    """The seeded population. Ids are raw RecFlow-style ids, 0-based. U users, I items, d latent dims."""

    config: SimulatorConfig
    user_attr: dict[str, np.ndarray]  # device_id, age, gender, province: [U] int64
    user_fav: np.ndarray  # [U, 3] favourite cate_two
    user_factor: np.ndarray  # [U, d] float32
    user_by_activity: np.ndarray  # [U] users, most active first
    item_attr: dict[str, np.ndarray]  # author_id, cate_two, cate_one, upload_type, upload_timestamp, duration
    item_factor: np.ndarray  # [I, d] float32
    item_pop_z: np.ndarray  # [I] standardised log popularity
    item_by_popularity: np.ndarray  # [I] items, most popular first
    cate_items: np.ndarray  # [I] item ids sorted by cate_two
    cate_offsets: np.ndarray  # [C2 + 1] start of each category in cate_items
    affinity_scale: float


#: Popularity skew: the item of popularity rank ``k`` of ``I`` is drawn with density ``~ (k / I) ** (1 / a - 1)``.
_SKEW = 1.5


def _draw(ranked: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    """Draw from ``ranked`` (most popular first) with the power-law rank density of ``_SKEW`` (O(1) a draw)."""
    rank = (rng.random(size, dtype=np.float32) ** np.float32(_SKEW) * len(ranked)).astype(np.int64)
    return ranked[np.minimum(rank, len(ranked) - 1)]


def _log_popularity(num: int) -> np.ndarray:
    """Standardised log density of popularity ranks ``0 .. num - 1`` under :func:`_draw`."""
    x = (np.arange(num) + 0.5) / num
    log_density = (1.0 / _SKEW - 1.0) * np.log(x)
    return (log_density - log_density.mean()) / (log_density.std() + 1e-12)


def build_world(config: SimulatorConfig, seed: int) -> World:
    """Draw the users and items of a world (deterministic in ``seed``)."""
    c, rng = config, np.random.default_rng([seed, 0])
    d = c.latent_dim
    cate_factor = rng.normal(size=(c.num_cate_two, d)).astype(np.float32)
    cate_parent = np.concatenate(
        [np.arange(c.num_cate_one), rng.integers(0, c.num_cate_one, c.num_cate_two - c.num_cate_one)]
    )
    author_factor = rng.normal(size=(c.num_authors, d)).astype(np.float32)
    # every category holds at least one item
    item_cate = np.concatenate([np.arange(c.num_cate_two),
                                _draw(rng.permutation(c.num_cate_two), rng, c.num_items - c.num_cate_two)])  # fmt: skip
    item_author = rng.integers(0, c.num_authors, c.num_items)
    item_factor = (cate_factor[item_cate] + 0.5 * author_factor[item_author]
                   + 0.5 * rng.normal(size=(c.num_items, d))).astype(np.float32)  # fmt: skip
    item_by_popularity = rng.permutation(c.num_items)
    log_pop = np.empty(c.num_items, dtype=np.float32)
    log_pop[item_by_popularity] = _log_popularity(c.num_items)
    start_s = int(np.datetime64(c.start, "s").astype(np.int64))
    item_attr = {
        "author_id": item_author,
        "cate_two": item_cate,
        "cate_one": cate_parent[item_cate].astype(np.int64),
        "upload_type": rng.integers(0, c.num_upload_types, c.num_items),
        "upload_timestamp": start_s - rng.integers(3_600, 90 * 86_400, c.num_items),
        "duration": np.round(rng.lognormal(3.5, 0.8, c.num_items)).astype(np.int64) + 1,
    }
    user_fav = rng.integers(0, c.num_cate_two, (c.num_users, 3))
    user_factor = (cate_factor[user_fav].mean(axis=1) + 0.5 * rng.normal(size=(c.num_users, d))).astype(np.float32)
    user_attr = {
        "device_id": rng.integers(0, c.num_devices, c.num_users),
        "age": rng.integers(0, c.num_ages, c.num_users),
        "gender": rng.integers(0, c.num_genders, c.num_users),
        "province": rng.integers(0, c.num_provinces, c.num_users),
    }
    sample_u = rng.integers(0, c.num_users, 4096)
    sample_i = rng.integers(0, c.num_items, 4096)
    affinity = np.einsum("nd,nd->n", user_factor[sample_u], item_factor[sample_i])
    order = np.argsort(item_cate, kind="stable")
    return World(
        config=c,
        user_attr=user_attr,
        user_fav=user_fav,
        user_factor=user_factor,
        user_by_activity=rng.permutation(c.num_users),
        item_attr=item_attr,
        item_factor=item_factor,
        item_pop_z=log_pop,
        item_by_popularity=item_by_popularity,
        cate_items=order.astype(np.int64),
        cate_offsets=np.searchsorted(item_cate[order], np.arange(c.num_cate_two + 1)),
        affinity_scale=float(affinity.std() + 1e-6),
    )


@dataclass
class SimulatedDay:
    """The ground truth of one simulated day (raw ids). R requests, M = ``flow_size[1]`` flow slots.

    Attributes:
        name: ISO date of the day.
        request_id, request_timestamp: ``[R]`` int64 (timestamp in ms, sorted).
        user: ``user_id``, ``device_id``, ``age``, ``gender``, ``province`` -> ``[R]`` int64.
        flow_items: flow -> ``[R, M, 8]`` int64 rows (:data:`.recflow.FLOW_COLUMNS`) in the recorded order,
            0 beyond ``flow_counts``.
        flow_counts: flow -> ``[R]`` int64 recorded items.
        flow_rank_index / flow_rerank_index: flow -> ``[R, M]`` int64 position in the rank / rerank
            stage's order, -1 where the item did not pass that stage (and beyond ``flow_counts``).
        history: ``[R, L, 10]`` int64 (:data:`.recflow.SEQ_COLUMNS`), left-padded, oldest first.
    """

    name: str
    request_id: np.ndarray
    request_timestamp: np.ndarray
    user: dict[str, np.ndarray]
    flow_items: dict[str, np.ndarray]
    flow_counts: dict[str, np.ndarray]
    flow_rank_index: dict[str, np.ndarray]
    flow_rerank_index: dict[str, np.ndarray]
    history: np.ndarray

    @property
    def num_requests(self) -> int:
        return len(self.request_id)

    def to_recflow_day(self, stages: int) -> RecFlowDay:
        """What a converter reads from this day: each flow's first 10 items, the top group's rank index."""
        spec = funnel_spec(stages)
        items = {
            c: np.concatenate([self.flow_items[f][:, :GROUP_SIZE, FLOW_COLUMNS.index(c)] for f in spec.groups], axis=1)
            for c in ITEM_COLUMNS
        }
        counts = np.stack([np.minimum(self.flow_counts[f], GROUP_SIZE) for f in spec.groups], axis=1)
        ranks = self.flow_rank_index if spec.top_index == "rank_index" else self.flow_rerank_index
        where = f"simulated day {self.name}"
        return RecFlowDay(
            name=self.name,
            request_id=self.request_id,
            request_timestamp=self.request_timestamp,
            user=self.user,
            items=items,
            counts=counts,
            top_rank_index=ranks[spec.groups[0]][:, :GROUP_SIZE].astype(np.float64),
            history={c: self.history[:, :, SEQ_COLUMNS.index(c)] for c in HISTORY_COLUMNS},
            sources={"user": where, "item": where, "history": where},
        )

    def feather_rows(self, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Rows of ``all_stage/<day>.feather`` for requests ``lo:hi``: one per recorded (request, video).

        A video recorded in several flows is one row (first recorded flow first); its stage flags follow
        its funnel depth (``rank_pos`` = passed rank), ``rank_index`` / ``rerank_index`` are -1 where the
        video did not pass that stage.
        """
        hi = self.num_requests if hi is None else hi
        items = np.concatenate([self.flow_items[f][lo:hi] for f in FLOWS], axis=1)  # [n, 7M, 8]
        m = self.flow_items[FLOWS[0]].shape[1]
        valid = np.concatenate([np.arange(m)[None, :] < self.flow_counts[f][lo:hi, None] for f in FLOWS], axis=1)
        rank = np.concatenate([self.flow_rank_index[f][lo:hi] for f in FLOWS], axis=1)
        rerank = np.concatenate([self.flow_rerank_index[f][lo:hi] for f in FLOWS], axis=1)
        flow_depth = np.repeat([_FLOW_DEPTH[f] for f in FLOWS], m)
        r, s = np.nonzero(valid)
        video = items[r, s, 0]
        _, first = np.unique(r * (int(video.max(initial=0)) + 1) + video, return_index=True)
        first = np.sort(first)
        r, s, video = r[first], s[first], video[first]
        rank, rerank = rank[r, s], rerank[r, s]
        depth = np.where(rerank >= 0, RERANK_POS, np.where(rank >= 0, RERANK_NEG, flow_depth[s]))
        shown = (depth == RERANK_POS) & (rerank < self.flow_counts["realshow"][lo:hi][r])
        req = r + lo
        col = {name: items[r, s, i] for i, name in enumerate(FLOW_COLUMNS)}
        flag = {name: (depth == d).astype(np.int8) for name, d in _FLOW_DEPTH.items() if name != "rank_pos"}
        flag["rank_pos"] = (depth >= RERANK_NEG).astype(np.int8)
        return {
            "request_id": self.request_id[req], "request_timestamp": self.request_timestamp[req],
            **{f: self.user[f][req] for f in USER_FIELDS},
            "video_id": video, "author_id": col["author_id"], "category_level_two": col["cate_two"],
            "category_level_one": col["cate_one"], "upload_type": col["upload_type"],
            "upload_timestamp": col["upload_timestamp"], "duration": col["duration"],
            "realshow": shown.astype(np.int8), **{f: flag[f] for f in FLOWS[1:]},
            "rank_index": rank, "rerank_index": rerank, "effective_view": col["effective_view"].astype(np.int8),
        }  # fmt: skip


#: Funnel depth of the items of each flow (``rank_pos``: at least ``RERANK_NEG``).
_FLOW_DEPTH = {
    "realshow": RERANK_POS, "rerank_pos": RERANK_POS, "rerank_neg": RERANK_NEG, "rank_pos": RERANK_NEG,
    "rank_neg": RANK_NEG, "coarse_neg": COARSE_NEG, "prerank_neg": PRERANK_NEG,
}  # fmt: skip


def _simulate_chunk(
    world: World, rng: np.random.Generator, users: np.ndarray, ts: np.ndarray, day: SimulatedDay, lo: int
) -> None:
    """Simulate the funnel of ``len(users)`` requests into rows ``lo:lo + len(users)`` of ``day``'s arrays."""
    c = world.config
    n, p, m = len(users), c.pool_size, c.flow_size[1]
    rows = np.arange(n)[:, None]

    # pool: oversample by popularity, drop repeats, keep the first `pool_size` distinct items per request
    draw = _draw(world.item_by_popularity, rng, (n, p + max(p // 4, 16)))
    order = np.argsort(draw, axis=1, kind="stable")
    sorted_draw = np.take_along_axis(draw, order, axis=1)
    repeat = np.zeros(draw.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], sorted_draw[:, 1:] == sorted_draw[:, :-1], axis=1)
    keep_first = np.argsort(repeat, axis=1, kind="stable")[:, :p]
    pool = np.take_along_axis(draw, keep_first, axis=1)  # [n, p]
    in_pool = ~np.take_along_axis(repeat, keep_first, axis=1)

    affinity = np.matmul(world.item_factor[pool], world.user_factor[users][:, :, None])[:, :, 0]
    relevance = affinity / world.affinity_scale + 0.5 * world.item_pop_z[pool] + 0.3 * rng.standard_normal((n, p))

    # the funnel; float64 keys have no ties among live items, so the sort kind cannot change the result
    depth = np.zeros((n, p), dtype=np.int8)
    alive = in_pool
    stage_pos = []
    ramp = np.broadcast_to(np.arange(p), (n, p))
    for stage, (keep, noise) in enumerate(zip(c.stage_keep, c.stage_noise)):
        score = np.where(alive, relevance + noise * rng.standard_normal((n, p)), -np.inf)
        if stage < 2:  # prerank and coarse: only who survives matters
            survive = np.zeros((n, p), dtype=bool)
            np.put_along_axis(survive, np.argpartition(-score, keep - 1, axis=1)[:, :keep], True, axis=1)
            alive = alive & survive
        else:  # rank and rerank: record each survivor's position in the stage's order
            pos = np.empty((n, p), dtype=np.int64)
            np.put_along_axis(pos, np.argsort(-score, axis=1), ramp, axis=1)
            alive = alive & (pos < keep)
            stage_pos.append(np.where(alive, pos, -1))
        depth += alive
    rank_index, rerank_index = stage_pos
    n_show = rng.integers(0, c.stage_keep[3] + 1, n)
    realshow = (depth == RERANK_POS) & (rerank_index < n_show[:, None])
    effective = realshow & (rng.random((n, p)) < 1.0 / (1.0 + np.exp(-(relevance - 0.5))))

    # flows: random subsets in random order. One sort by (group, uniform) lays every disjoint group out
    # contiguously in random order; rank_pos (depth >= RERANK_NEG) gets its own shuffle.
    code = np.where(in_pool, depth, RERANK_POS + 1)
    by_group = np.argsort(code + rng.random((n, p)), axis=1)
    sizes = np.stack([(depth == d) & in_pool for d in range(RERANK_POS + 1)], axis=1).sum(axis=2)  # [n, 5]
    starts = np.cumsum(sizes, axis=1) - sizes
    passed_rank = depth >= RERANK_NEG
    rank_pos_order = np.argsort(np.where(passed_rank, rng.random((n, p)), 2.0), axis=1)
    shown_order = np.zeros((n, m), dtype=np.int64)  # slot of the item shown at position k (realshow order)
    shown_r, shown_j = np.nonzero(realshow)
    shown_order[shown_r, rerank_index[shown_r, shown_j]] = shown_j
    ramp_m = np.arange(m)
    attr = world.item_attr
    hi = lo + n
    for flow in FLOWS:
        if flow == "realshow":  # every shown item, in shown order
            slots, count = shown_order, np.minimum(realshow.sum(axis=1), m)
        elif flow == "rank_pos":
            slots, available = rank_pos_order[:, :m], passed_rank.sum(axis=1)
        else:
            d = _FLOW_DEPTH[flow]
            idx = np.minimum(starts[:, d : d + 1] + ramp_m, p - 1)
            slots, available = np.take_along_axis(by_group, idx, axis=1), sizes[:, d]
        if flow != "realshow":
            count = np.minimum(rng.integers(c.flow_size[0], c.flow_size[1] + 1, n), available)
        valid = ramp_m[None, :] < count[:, None]
        item = pool[rows, slots]
        dest = day.flow_items[flow][lo:hi]
        for i, name in enumerate(FLOW_COLUMNS):
            values = item if name == "video_id" else effective[rows, slots] if name == "effective_view" else None
            dest[:, :, i] = np.where(valid, attr[name][item] if values is None else values, 0)
        day.flow_counts[flow][lo:hi] = count
        day.flow_rank_index[flow][lo:hi] = np.where(valid, rank_index[rows, slots], -1)
        day.flow_rerank_index[flow][lo:hi] = np.where(valid, rerank_index[rows, slots], -1)
    _simulate_history(world, rng, users, ts, day.history[lo:hi])


def _simulate_history(
    world: World, rng: np.random.Generator, users: np.ndarray, ts: np.ndarray, dest: np.ndarray
) -> None:
    """Fill ``dest`` ``[n, L, 10]`` with left-padded histories (oldest first), 70 % from favourite categories."""
    c = world.config
    n, length = len(users), c.history_length
    fav = world.user_fav[users[:, None], rng.integers(0, 3, (n, length))]  # [n, L]
    start, size = world.cate_offsets[fav], np.diff(world.cate_offsets)[fav]
    from_fav = world.cate_items[start + (rng.random((n, length)) * size).astype(np.int64)]
    popular = _draw(world.item_by_popularity, rng, (n, length))
    item = np.where(rng.random((n, length)) < 0.7, from_fav, popular)
    n_valid = rng.integers(0, length + 1, n)
    valid = np.arange(length)[None, :] >= (length - n_valid)[:, None]
    age_ms = -np.sort(-rng.integers(60_000, 30 * _MS_PER_DAY, (n, length)), axis=1)  # oldest first
    attr = world.item_attr
    cols = {
        "video_id": item, "request_timestamp": ts[:, None] - age_ms,
        "playing_time": rng.integers(1, 300, (n, length)), "request_id": rng.integers(1, 2**40, (n, length)),
    }  # fmt: skip
    for i, name in enumerate(SEQ_COLUMNS):
        dest[:, :, i] = np.where(valid, cols[name] if name in cols else attr[name][item], 0)


def _day_sizes(requests: int, days: int) -> np.ndarray:
    if days <= 0 or requests < days:
        raise ValueError(f"requests={requests}, days={days}: need days >= 1 and at least one request per day")
    return np.full(days, requests // days) + (np.arange(days) < requests % days)


@dataclass
class _DayPlan:
    """What is drawn per day before the funnel: the requests' ids, times and users."""

    index: int
    name: str
    request_id: np.ndarray
    request_timestamp: np.ndarray
    users: np.ndarray


def _day_plans(requests: int, days: int, seed: int, world: World) -> Iterator[_DayPlan]:
    config = world.config
    start = np.datetime64(config.start, "D")
    first_id = 1
    for day_index, size in enumerate(_day_sizes(requests, days).tolist()):
        date = start + np.timedelta64(day_index, "D")
        day_rng = np.random.default_rng([seed, 1, day_index])
        day_ms = int(date.astype("datetime64[ms]").astype(np.int64))
        ts = np.sort(day_ms + day_rng.integers(0, _MS_PER_DAY, size))
        users = _draw(world.user_by_activity, day_rng, size)
        yield _DayPlan(day_index, str(date), np.arange(first_id, first_id + size, dtype=np.int64), ts, users)
        first_id += size


def _empty_day(world: World, plan: _DayPlan, lo: int, hi: int) -> SimulatedDay:
    """A :class:`SimulatedDay` for requests ``lo:hi`` of ``plan`` with its funnel arrays still to fill."""
    c, size, users = world.config, hi - lo, plan.users[lo:hi]
    m = c.flow_size[1]
    return SimulatedDay(
        name=plan.name,
        request_id=plan.request_id[lo:hi],
        request_timestamp=plan.request_timestamp[lo:hi],
        user={"user_id": users, **{k: world.user_attr[k][users] for k in USER_FIELDS[1:]}},
        flow_items={f: np.empty((size, m, len(FLOW_COLUMNS)), dtype=np.int64) for f in FLOWS},
        flow_counts={f: np.empty(size, dtype=np.int64) for f in FLOWS},
        flow_rank_index={f: np.empty((size, m), dtype=np.int64) for f in FLOWS},
        flow_rerank_index={f: np.empty((size, m), dtype=np.int64) for f in FLOWS},
        history=np.empty((size, c.history_length, len(SEQ_COLUMNS)), dtype=np.int64),
    )


def _chunks(world: World, plan: _DayPlan, seed: int) -> Iterator[tuple[int, int, np.random.Generator]]:
    size, step = len(plan.request_id), world.config.chunk_size
    for chunk, lo in enumerate(range(0, size, step)):
        yield lo, min(lo + step, size), np.random.default_rng([seed, 2, plan.index, chunk])


def simulate_days(
    *, requests: int, days: int, seed: int = 0, config: SimulatorConfig | None = None
) -> Iterator[SimulatedDay]:
    """Yield the simulated days in order (``requests`` spread evenly over ``days``): the ground truth.

    ``config`` defaults to :meth:`SimulatorConfig.for_requests`. Raises ``ValueError`` for
    ``requests < days`` or ``days < 1``.
    """
    _day_sizes(requests, days)
    world = build_world(config or SimulatorConfig.for_requests(requests), seed)
    for plan in _day_plans(requests, days, seed, world):
        day = _empty_day(world, plan, 0, len(plan.request_id))
        for lo, hi, rng in _chunks(world, plan, seed):
            _simulate_chunk(world, rng, plan.users[lo:hi], plan.request_timestamp[lo:hi], day, lo)
        yield day


def _store_day(world: World, plan: _DayPlan, seed: int, stages: int, schema: DatasetSchema) -> dict[str, np.ndarray]:
    """The store columns of one day, simulated chunk by chunk (memory: the day's columns plus one chunk).

    Identical to converting the whole :class:`SimulatedDay` (the chunks use the same generators).
    """
    spec = funnel_spec(stages)
    arrays: dict[str, np.ndarray] = {}
    size = len(plan.request_id)
    for lo, hi, rng in _chunks(world, plan, seed):
        chunk = _empty_day(world, plan, lo, hi)
        _simulate_chunk(world, rng, chunk.user["user_id"], chunk.request_timestamp, chunk, 0)
        for name, values in to_store_arrays(chunk.to_recflow_day(stages), spec, schema, inplace=True).items():
            if name not in arrays:
                arrays[name] = np.empty((size, *values.shape[1:]), dtype=values.dtype)
            arrays[name][lo:hi] = values
    shuffle_candidates(arrays, spec.num_candidates, day_shuffle_rng(plan.name))
    return arrays


# ------------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------------
def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    ends = np.cumsum(counts)
    return [flat[a:b] for a, b in zip((ends - counts).tolist(), ends.tolist())]


def write_recflow_day(root: Path, day: SimulatedDay, *, batch_size: int = 20_000) -> None:
    """Write one day in RecFlow's published layout under ``root`` (feather + two pickles).

    The feather file is written in record batches of ``batch_size`` requests (an Arrow IPC file, i.e.
    Feather V2, LZ4-compressed); the pickles hold ``int64`` arrays keyed by Python ``int`` request ids, with
    empty flows left out of a request's dict.
    """
    path = root / FEATHER_DIR / f"{day.name}.feather"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    writer = None
    with pa.OSFile(str(path), "wb") as sink:
        for lo in range(0, day.num_requests, batch_size):
            batch = pa.record_batch(day.feather_rows(lo, min(lo + batch_size, day.num_requests)))
            if writer is None:
                writer = pa.ipc.new_file(sink, batch.schema, options=options)
            writer.write_batch(batch)
        if writer is not None:
            writer.close()
    rids = day.request_id.tolist()
    per_flow = {}
    for flow in FLOWS:
        counts = day.flow_counts[flow]
        valid = np.arange(day.flow_items[flow].shape[1])[None, :] < counts[:, None]
        per_flow[flow] = _split(day.flow_items[flow][valid], counts)
    requests = {
        rid: {flow: per_flow[flow][i] for flow in FLOWS if len(per_flow[flow][i])} for i, rid in enumerate(rids)
    }
    _dump(requests, root / REQUEST_DIR / f"{day.name}.pkl")
    del requests, per_flow
    _dump({rid: day.history[i] for i, rid in enumerate(rids)}, root / SEQ_DIR / f"{day.name}.pkl")


def simulate(
    out: Path,
    *,
    requests: int,
    days: int,
    stages: int = 2,
    layout: str = "store",
    seed: int = 0,
    progress: bool = False,
    test_days: int = 1,
    valid_days: int = 0,
    config: SimulatorConfig | None = None,
) -> DatasetSchema | None:
    """Simulate ``requests`` requests over ``days`` days and write them to ``out``.

    Args:
        out: output folder (replaced atomically if it holds a previous output of the same layout).
        requests: total number of requests (spread evenly over the days).
        days: number of days (one partition each), starting at ``config.start``.
        stages: 2 or 3, the cascade the store layout is built for (the RecFlow layout holds every flow).
        layout: ``"store"`` (our request-list store) or ``"recflow"`` (RecFlow's published files).
        seed: seed of the world and the funnel; the same seed gives identical files.
        progress: show a progress bar over days.
        test_days, valid_days: partition roles of the store layout (as :func:`.recflow.convert_recflow`).
        config: world and funnel sizes (default :meth:`SimulatorConfig.for_requests`).

    Returns:
        The store schema for ``layout="store"``; ``None`` for ``layout="recflow"``.

    Raises:
        ValueError: a bad ``layout``, ``stages``, ``requests``/``days`` or roles, or ``out`` is an unrelated
            non-empty folder. Nothing is written then.
    """
    if layout not in ("store", "recflow"):
        raise ValueError(f"layout={layout!r}: expected 'store' or 'recflow'")
    funnel_spec(stages)  # validates
    _day_sizes(requests, days)
    config = config or SimulatorConfig.for_requests(requests)
    roles = assign_roles([str(i) for i in range(days)], test_days, valid_days)
    out = Path(out)
    world = build_world(config, seed)
    marker = SCHEMA_FILE if layout == "store" else ID_CNT_FILE
    with staged_directory(out, marker=marker) as tmp, day_progress(progress, days, f"simulate ({layout})") as advance:
        partitions: list[Partition] = []
        id_cnt = config.canonical_id_cnt()
        for plan, role in zip(_day_plans(requests, days, seed, world), roles):
            size = len(plan.request_id)
            if layout == "recflow":
                day = _empty_day(world, plan, 0, size)
                for lo, hi, rng in _chunks(world, plan, seed):
                    _simulate_chunk(world, rng, plan.users[lo:hi], plan.request_timestamp[lo:hi], day, lo)
                write_recflow_day(tmp, day)
                del day
            else:
                part = day_partition(plan.name, role, size)
                schema = recflow_schema(
                    stages=stages, id_cnt=id_cnt, history_length=config.history_length, partitions=[part]
                )
                write_partition(tmp, schema, part, _store_day(world, plan, seed, stages, schema))
                partitions.append(part)
            logger.info("simulated %s: %d requests", plan.name, size)
            advance(plan.name)
        if layout == "recflow":
            _dump(config.id_cnt(), tmp / ID_CNT_FILE)
            write_text_atomic(tmp / "SIMULATED.txt", f"cascade-ranking synthetic funnel, seed {seed}\n")
            return None
        schema = recflow_schema(
            stages=stages,
            id_cnt=id_cnt,
            history_length=config.history_length,
            partitions=partitions,
            name=f"synthetic-{stages}stage",
            provenance={
                "source": "cascade_ranking.datasets.synthetic (simulated production funnel)",
                "seed": int(seed),
                "requests": int(requests),
                "days": int(days),
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
            },
        )
        write_schema(tmp, schema)
    return schema


def small_config(**overrides) -> SimulatorConfig:
    """A tiny world for tests and examples (fast to build)."""
    base = SimulatorConfig(num_users=60, num_devices=70, num_items=2_000, num_authors=100, num_cate_two=30,
                           num_cate_one=6, history_length=50)  # fmt: skip
    return replace(base, **overrides)

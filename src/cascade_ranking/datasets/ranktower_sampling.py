"""RankTower's full-stage sampling: a pre-ranking dataset built from an interaction log with two fitted models.

Yan & Li (2023), *RankTower*, arXiv 2407.12385, Sec. 4.1 (full-stage sampling), 4.2 (label aggregation) and
5.1 (how the paper simulates a cascade on public data). A pre-ranking model sees, per request, the samples of
the *whole* cascade, in three sample spaces. This module builds them from any :class:`~.full_stage.
InteractionLog` and writes a one-stage dataset of the request-list store (:mod:`cascade_ranking.data.store`).

**Requests** are those of :func:`~.full_stage.make_requests`: a user's time-ordered ratings cut into chunks of
``group_size`` (10) consecutive ratings; a request's time is its first rating's. Weeks, partition files and
the train / valid / test roles are as in :mod:`~.full_stage`: one Parquet file per week (Monday 00:00 UTC),
the last ``test_weeks`` (4) are ``test``, the ``valid_weeks`` (2) before them ``valid``, the rest ``train``.

**Candidates** (``N = group_size + candidate_samples + random_samples`` slots, default 10 + 20 + 20 = 50), one
funnel position (``stage``) per sample space (:data:`FUNNEL_POSITIONS`):

* position 2, ``impression``: the chunk's rated items (what the logged system exposed);
* position 1, ``candidate``: the ``candidate_samples`` items a **two-tower retrieval model** (our
  :class:`~cascade_ranking.models.DSSM`) scores highest for the request among the items the request may
  not show (below): hard negatives, what the funnel retrieved but the user never rated;
* position 0, ``random``: ``random_samples`` items drawn uniformly among the remaining allowed items.

A request never shows, as candidate or random sample, an item the user rated before its *period cutoff*
(train requests: the start of the first validation week; valid requests: the start of the first test week;
test requests: any time) nor one of its own impressions. So no negative is an item the user interacted with
by then (test negatives: ever), and training samples do not depend on interactions after the training
period. Slots are written in a seeded random order.

**The two fitted models** are fitted **once**, on the *training period only*: the requests cut from the
log's interactions before the start of the first validation week (:func:`fit_retriever`,
:func:`fit_ranker`). The paper does not say whether its simulated funnel is refitted over time; we fit once
rather than rolling week by week, since two small neural fits per week would cost 26x as much on
MovieLens-100K. Training requests are therefore sampled by models that saw them (as the logged funnel of any
production training set did); validation and test requests never were. The build runs on CPU.

* Retriever: DSSM trained with binary cross-entropy, positives = the impressions, negatives =
  ``retriever.negatives`` items per request drawn uniformly among items the user did not rate before the
  cutoff (:class:`FitConfig` epochs, batch size, Adam learning rate).
* Ranker: DIN trained on **impression samples only** (the items a ranking model gets feedback on) by least
  squares on their hard labels (below). Its prediction for *every* valid candidate is written to the
  ``soft_label`` column: the teacher of RankTower's distillation (eq. 14, which reads impressions only).

**Hard labels** (Sec. 4.2, label aggregation: a weighted sum of the feedback types plus an impression label,
:func:`~cascade_ranking.losses.ranktower.aggregate_hard_labels`): for MovieLens-like logs the only feedback is
the rating, so an impression's label is ``impression_label + rating_weight * grade`` with ``grade`` in
``1..K`` the rank of its rating among the log's distinct rating values (ML-100K: 2 .. 6 with the defaults
1 and 1); candidate and random samples have label 0. Ground truth (``gt_num = group_size``) = the impressions.

**Stored layout**: ``funnel_positions = ["random", "candidate", "impression"]``, ``keep = [keep]`` (one
pre-ranking stage keeping ``keep`` of ``N``; default 20 of 50), ``gt_num = group_size``; features, history
(most recent first, left-aligned, 0-padded) and ids exactly as :mod:`~.full_stage`; ``label`` = hard labels;
``soft_label`` = the ranker's predictions (0 at padded slots).

**Determinism**: every random draw comes from generators seeded by ``seed`` (the fits: one torch and one
numpy generator; the random samples and slot order of week ``w``: a generator seeded by ``(seed, w)``), and
the fits run under a forked torch RNG, so the same log, config, seed and torch thread count give identical
files. On MovieLens-100K the whole build (two fits included) takes about half a minute on 2 CPU cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..data.atomic import check_replaceable, staged_directory
from ..data.loader import to_batch
from ..data.schema import (
    SCHEMA_FILE,
    DatasetSchema,
    HistoryField,
    Partition,
    PartitionRole,
    TrainDefaults,
    roles_in_time_order,
)
from ..data.store import write_partition, write_schema
from ..losses.ranktower import aggregate_hard_labels
from ..models import DIN, DSSM
from ..types import RequestBatch
from .full_stage import (
    InteractionLog,
    RequestTable,
    _schema_features,
    make_requests,
    request_columns,
    week_start_date,
    week_start_seconds,
)

__all__ = [
    "CONSTRUCTION",
    "FUNNEL_POSITIONS",
    "FitConfig",
    "RankTowerSamples",
    "RankTowerSamplingConfig",
    "build_ranktower_samples",
    "corpus_scores",
    "fit_ranker",
    "fit_retriever",
    "hard_labels",
    "period_cutoffs",
]

logger = logging.getLogger(__name__)

#: Identifies this construction (stored in the provenance).
CONSTRUCTION = "ranktower-full-stage-v1"
#: Funnel positions (index = the stored ``stage``): RankTower's three sample spaces, lowest first.
FUNNEL_POSITIONS = ["random", "candidate", "impression"]
_RANDOM, _CANDIDATE, _IMPRESSION = 0, 1, 2
_BLOCK_ROWS = 1024  # requests scored at once (bounds the dense [rows, items] matrices)


# ------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitConfig:
    """How one of the two funnel models is fitted (small: the whole build should take well under a minute).

    Attributes:
        epochs: passes over the training-period requests.
        batch_size: requests per step.
        lr: Adam learning rate.
        emb_dim: embedding dimension.
        hidden: first hidden width of the model.
        negatives: retriever only, uniformly drawn negatives per request.
    """

    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.01
    emb_dim: int = 8
    hidden: int = 128
    negatives: int = 20

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "emb_dim", "hidden", "negatives"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive integer")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: must be a positive finite number")


@dataclass(frozen=True)
class RankTowerSamplingConfig:
    """Layout of the full-stage pre-ranking dataset (see the module docstring).

    Attributes:
        group_size: impressions per request (ratings per request) = ``gt_num``.
        candidate_samples: hard negatives retrieved by the two-tower model per request.
        random_samples: uniform negatives per request.
        keep: candidates the pre-ranking stage keeps (the dataset's ``keep = [keep]``).
        history_length: L, history slots per request.
        history_fields: item fields the history holds, ``item_id`` first.
        test_weeks, valid_weeks: the final weeks with role ``test`` and the weeks before them with ``valid``.
        impression_label: hard label every impression starts from (Sec. 4.2).
        rating_weight: weight of the rating grade in the hard label.
        retriever, ranker: how the two funnel models are fitted.
    """

    group_size: int = 10
    candidate_samples: int = 20
    random_samples: int = 20
    keep: int = 20
    history_length: int = 50
    history_fields: tuple[str, ...] = ("item_id",)
    test_weeks: int = 4
    valid_weeks: int = 2
    impression_label: float = 1.0
    rating_weight: float = 1.0
    retriever: FitConfig = field(default_factory=FitConfig)
    ranker: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        for name in ("group_size", "test_weeks", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("candidate_samples", "random_samples", "history_length", "valid_weeks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be non-negative")
        if not self.group_size <= self.keep <= self.num_candidates:
            raise ValueError(
                f"keep={self.keep}: must lie in [group_size={self.group_size}, N={self.num_candidates}] "
                "(the stage keeps at least the ground truth and at most every candidate)"
            )
        if not self.history_fields or self.history_fields[0] != "item_id":
            raise ValueError(f"history_fields={self.history_fields}: must start with 'item_id'")
        if not (np.isfinite(self.impression_label) and np.isfinite(self.rating_weight)):
            raise ValueError("impression_label and rating_weight must be finite")
        if self.impression_label + self.rating_weight <= 0:
            raise ValueError(
                f"impression_label={self.impression_label}, rating_weight={self.rating_weight}: the lowest "
                "impression label (impression_label + rating_weight) must be positive, above every negative's 0"
            )

    @property
    def num_candidates(self) -> int:
        return self.group_size + self.candidate_samples + self.random_samples


@dataclass(frozen=True)
class RankTowerSamples:
    """What :func:`build_ranktower_samples` returns: the written schema and the two fitted models (eval mode)."""

    schema: DatasetSchema
    retriever: DSSM
    ranker: DIN


# ------------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------------
def period_cutoffs(weeks: np.ndarray, test_weeks: int, valid_weeks: int) -> tuple[list[PartitionRole], int, int]:
    """Roles of consecutive ``weeks`` and the training / validation cutoffs (Unix seconds).

    Returns:
        ``(roles, train_cutoff, valid_cutoff)``: ``train_cutoff`` = start of the first non-training week,
        ``valid_cutoff`` = start of the first test week.

    Raises:
        ValueError: too few weeks to leave a training week.
    """
    n = len(weeks)
    if n <= test_weeks + valid_weeks:
        raise ValueError(
            f"the log spans {n} weeks with requests; test_weeks={test_weeks} + valid_weeks={valid_weeks} "
            "leave no training week"
        )
    n_train = n - test_weeks - valid_weeks
    return (
        roles_in_time_order(n_train, valid_weeks, test_weeks),
        week_start_seconds(weeks[n_train]),
        week_start_seconds(weeks[n - test_weeks]),
    )


def hard_labels(grade: np.ndarray, *, impression_label: float, rating_weight: float) -> np.ndarray:
    """Hard labels of impressions, ``impression_label + rating_weight * grade`` (Sec. 4.2), float32, any shape."""
    g = torch.from_numpy(np.asarray(grade, dtype=np.float32))
    return aggregate_hard_labels({"rating": g}, {"rating": float(rating_weight)}, float(impression_label)).numpy()


def _rated_before(log: InteractionLog, cutoff: int | None) -> sp.csr_matrix:
    """``[U + 1, I + 1]`` bool CSR: ``[u, i]`` = user ``u`` rated item ``i`` before ``cutoff`` (None = ever)."""
    keep = np.ones(len(log.user), bool) if cutoff is None else log.timestamp < cutoff
    u, i = log.user[keep].astype(np.int64), log.item[keep].astype(np.int64)
    return sp.csr_matrix(
        (np.ones(len(u), dtype=bool), (u, i)), shape=(log.num_users + 1, log.num_items + 1), dtype=bool
    )


def _item_table(log: InteractionLog) -> dict[str, torch.Tensor]:
    """Item field ids of the whole corpus, ``[I + 1]`` each (row 0 = the padding item)."""
    ids = np.arange(log.num_items + 1, dtype=np.int64)
    table = {"item_id": torch.from_numpy(ids)}
    table.update({name: torch.from_numpy(attr.values.astype(np.int64)) for name, attr in log.item_features.items()})
    return table


@torch.no_grad()
def corpus_scores(retriever: DSSM, batch: RequestBatch, item_table: dict[str, torch.Tensor]) -> torch.Tensor:
    """Two-tower scores of every corpus item for every request: ``[B, I + 1]`` float32 (column 0 = padding).

    ``item_table`` maps every item field to its ``[I + 1]`` ids.
    """
    user = retriever.user_embedding(batch)  # [B, D]
    items = retriever.encode_items(item_table)  # [I + 1, D]
    return user @ items.T


def _top_allowed(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best-scored allowed columns per row: ``items [B, k]`` (0 where fewer are allowed) and ``valid``.

    ``torch.topk`` over the scores with disallowed columns at ``-inf`` (deterministic on CPU; exact ties
    between float scores of distinct items do not occur in practice).
    """
    b, n = scores.shape
    k = min(k, n)
    if k == 0 or b == 0:
        return np.zeros((b, k), np.int64), np.zeros((b, k), bool)
    keys = torch.where(allowed, scores.double(), torch.full((), -torch.inf, dtype=torch.float64))
    idx = torch.topk(keys, k, dim=1, sorted=True).indices
    valid = allowed.gather(1, idx)
    return torch.where(valid, idx, torch.zeros_like(idx)).numpy(), valid.numpy()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for lo in range(0, n, batch_size):
        yield order[lo : lo + batch_size]


# ------------------------------------------------------------------------------------------------------
# the two funnel models
# ------------------------------------------------------------------------------------------------------
def fit_retriever(
    log: InteractionLog,
    req: RequestTable,
    rated: sp.csr_matrix,
    schema: DatasetSchema,
    config: FitConfig,
    *,
    history_fields: tuple[str, ...],
    seed: int,
) -> tuple[DSSM, float]:
    """Fit the two-tower retriever (DSSM) on the requests ``req`` (the training period; module docstring).

    Per request: its ``S`` impressions (target 1) and ``config.negatives`` items drawn uniformly among the
    items not in ``rated[user]`` nor among the impressions (target 0); masked binary cross-entropy, Adam.

    Args:
        log: the log (attribute tables).
        req: the fitting requests (cut from the training-period interactions only).
        rated: ``[U + 1, I + 1]`` bool CSR of the items each user rated in the training period.
        schema: the dataset schema (feature spec of the model).
        config: fit sizes.
        history_fields: history fields of the schema.
        seed: seeds the negatives, the batch order and the initialisation.

    Returns:
        ``(model in eval mode, mean loss of the last epoch)``.
    """
    rng = np.random.default_rng([int(seed), 1])
    s, m = req.items.shape[1], config.negatives
    rows = np.arange(req.num_requests)
    blocked = rated[req.user].toarray()
    blocked[:, 0] = True
    np.put_along_axis(blocked, req.items, True, axis=1)
    keys = torch.from_numpy(rng.random(blocked.shape))
    neg, neg_valid = _top_allowed(keys, torch.from_numpy(~blocked), m)
    items = np.concatenate([req.items, neg], axis=1)
    mask = np.concatenate([np.ones((len(rows), s), bool), neg_valid], axis=1)
    stage = np.concatenate([np.full((len(rows), s), _IMPRESSION), np.full((len(rows), m), _RANDOM)], axis=1)
    arrays = request_columns(
        log, req, rows, history_fields, items, mask, stage, (stage == _IMPRESSION).astype(np.float32)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = DSSM(schema, emb_dim=config.emb_dim, hidden=config.hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        last = _fit(model, optimizer, arrays, schema, config, rng, _bce)
    return model.eval(), last


def fit_ranker(
    log: InteractionLog,
    req: RequestTable,
    schema: DatasetSchema,
    config: FitConfig,
    *,
    history_fields: tuple[str, ...],
    impression_label: float,
    rating_weight: float,
    seed: int,
) -> tuple[DIN, float]:
    """Fit the ranking model (DIN) on the impression samples of ``req`` (the training period) by least squares.

    Target: the impressions' hard labels (:func:`hard_labels`). Only impressions are seen, as a ranking
    model only gets feedback on what was exposed.

    Returns:
        ``(model in eval mode, mean loss of the last epoch)``.
    """
    rng = np.random.default_rng([int(seed), 2])
    rows = np.arange(req.num_requests)
    label = hard_labels(req.grade, impression_label=impression_label, rating_weight=rating_weight)
    mask = np.ones(req.items.shape, bool)
    stage = np.full(req.items.shape, _IMPRESSION)
    arrays = request_columns(log, req, rows, history_fields, req.items, mask, stage, label)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 1)
        model = DIN(schema, emb_dim=config.emb_dim, hidden=config.hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        last = _fit(model, optimizer, arrays, schema, config, rng, _squared_error)
    return model.eval(), last


def _bce(scores: torch.Tensor, batch: RequestBatch) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(scores, batch.label, reduction="none")
    return (loss * batch.mask).sum() / batch.mask.sum().clamp_min(1)


def _squared_error(scores: torch.Tensor, batch: RequestBatch) -> torch.Tensor:
    return ((scores - batch.label).square() * batch.mask).sum() / batch.mask.sum().clamp_min(1)


def _fit(model, optimizer, arrays, schema, config: FitConfig, rng: np.random.Generator, loss_fn) -> float:
    model.train()
    n = len(arrays["request_id"])
    last = float("nan")
    for _ in range(config.epochs):
        total, steps = 0.0, 0
        for rows in _batches(n, config.batch_size, rng):
            batch = to_batch({k: v[rows] for k, v in arrays.items()}, schema)
            loss = loss_fn(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        last = total / max(steps, 1)
    return last


# ------------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------------
def _week_rng(seed: int, week: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(week) + 2**31, 10 + int(stream)])


def build_ranktower_samples(
    log: InteractionLog,
    out_dir: str | Path,
    *,
    name: str,
    seed: int = 0,
    config: RankTowerSamplingConfig | None = None,
    train_defaults: TrainDefaults | None = None,
    provenance: dict | None = None,
    threads: int | None = None,
) -> RankTowerSamples:
    """Build RankTower's full-stage pre-ranking dataset of ``log`` and write it to ``out_dir``.

    Written atomically (assembled in a temporary folder beside ``out_dir``, then moved into place); an
    existing dataset at ``out_dir`` is replaced, any other non-empty folder is refused.

    Args:
        log: the interaction log and attribute tables.
        out_dir: the dataset folder to write.
        name: dataset name stored in the schema.
        seed: non-negative seed of every random draw and of both fits.
        config: layout and fit sizes; default :class:`RankTowerSamplingConfig()`.
        train_defaults: the dataset's training defaults (default: batch 256, 3 passes).
        provenance: extra facts stored in the schema's provenance.
        threads: torch intra-op threads during the build (restored afterwards); ``None`` = torch's setting.
            One thread is the fastest on a busy 2-core machine (idle threads spin).

    Returns:
        :class:`RankTowerSamples`: the written schema and the fitted retriever and ranker.

    Raises:
        ValueError: ``seed`` is negative, a history field is not an item attribute of ``log``, the log spans
            too few weeks, the training period holds no request, or ``out_dir`` is a non-empty folder that
            is not a dataset.
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed={seed}: must be a non-negative integer")
    previous = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads={threads!r}: must be a positive integer or None")
        torch.set_num_threads(int(threads))
    try:
        return _build(
            log, Path(out_dir), name, int(seed), config or RankTowerSamplingConfig(), train_defaults, provenance
        )
    finally:
        torch.set_num_threads(previous)


def _build(
    log: InteractionLog,
    out_dir: Path,
    name: str,
    seed: int,
    config: RankTowerSamplingConfig,
    train_defaults: TrainDefaults | None,
    provenance: dict | None,
) -> RankTowerSamples:
    """Requests, the fitted retriever and ranker, then the weekly partitions (see :func:`build_ranktower_samples`)."""
    t0 = time.perf_counter()
    unknown = [f for f in config.history_fields[1:] if f not in log.item_features]
    if unknown:
        raise ValueError(
            f"history_fields={config.history_fields}: {unknown} are not item attributes of {log.source} "
            f"(item attributes: {sorted(log.item_features)})"
        )
    check_replaceable(out_dir, SCHEMA_FILE, what="out_dir")
    s = config.group_size
    req = make_requests(log, group_size=s, history_length=config.history_length)
    if req.num_requests == 0:
        raise ValueError(f"{log.source}: no user has {s} ratings, so there is no request")
    weeks = np.arange(req.week.min(), req.week.max() + 1)
    roles, train_cutoff, valid_cutoff = period_cutoffs(weeks, config.test_weeks, config.valid_weeks)
    fit_req = make_requests(
        log.select(log.timestamp < train_cutoff), group_size=s, history_length=config.history_length
    )
    if fit_req.num_requests == 0:
        raise ValueError(
            f"{log.source}: the training period (before {np.datetime64(train_cutoff, 's')}) holds no request"
        )
    schema = DatasetSchema(
        name=name,
        features=_schema_features(log),
        history=[HistoryField(name=f, item_field=f) for f in config.history_fields],
        history_length=config.history_length,
        num_candidates=config.num_candidates,
        funnel_positions=list(FUNNEL_POSITIONS),
        keep=[config.keep],
        gt_num=s,
        partitions=[],
        train_defaults=train_defaults or TrainDefaults(batch_size=256, passes=3),
        provenance={},
    )
    hist = tuple(config.history_fields)
    retriever, retriever_loss = fit_retriever(
        log, fit_req, _rated_before(log, train_cutoff), schema, config.retriever, history_fields=hist, seed=seed
    )
    ranker, ranker_loss = fit_ranker(
        log, fit_req, schema, config.ranker, history_fields=hist, impression_label=config.impression_label,
        rating_weight=config.rating_weight, seed=seed,
    )  # fmt: skip
    logger.info(
        "%s: fitted the retriever (loss %.4f) and the ranker (loss %.4f) on %d training-period requests in %.1fs",
        name, retriever_loss, ranker_loss, fit_req.num_requests, time.perf_counter() - t0,
    )  # fmt: skip
    facts = {
        "construction": CONSTRUCTION,
        "seed": int(seed),
        "config": asdict(config),
        "funnel_positions": "random (uniform), candidate (two-tower top items), impression (rated)",
        "weeks": "Monday 00:00 UTC to Sunday 24:00 UTC; a request's time is its first rating's timestamp",
        "train_cutoff": str(np.datetime64(train_cutoff, "s")),
        "valid_cutoff": str(np.datetime64(valid_cutoff, "s")),
        "models_fit": "DSSM retriever and DIN ranker fitted once, on requests cut from the interactions "
        "before train_cutoff",
        "exclusion": "no negative is an item the user rated before its period's cutoff (train: "
        "train_cutoff, valid: valid_cutoff, test: ever) nor one of its impressions",
        "labels": "impression: impression_label + rating_weight * rating grade; others 0",
        "soft_label": "the DIN ranker's prediction (regression on impression hard labels)",
        "fit_requests": fit_req.num_requests,
        "retriever_final_loss": retriever_loss,
        "ranker_final_loss": ranker_loss,
        "requests": req.num_requests,
        "ratings_dropped_in_partial_chunks": req.dropped,
        **(provenance or {}),
    }
    schema = schema.model_copy(update={"provenance": facts})
    rated = {
        "train": _rated_before(log, train_cutoff),
        "valid": _rated_before(log, valid_cutoff),
        "test": _rated_before(log, None),
    }
    schema = _write_weeks(log, req, out_dir, schema, weeks, roles, rated, (retriever, ranker), config, seed)
    logger.info(
        "%s: wrote %d requests x %d candidates in %d weekly partitions to %s in %.1fs",
        name, req.num_requests, config.num_candidates, len(schema.partitions), out_dir, time.perf_counter() - t0,
    )  # fmt: skip
    return RankTowerSamples(schema=schema, retriever=retriever, ranker=ranker)


def _write_weeks(log, req, out_dir, schema, weeks, roles, rated, fitted, config, seed) -> DatasetSchema:
    """Write one partition per week into a staged folder that replaces ``out_dir``; the schema with them."""
    s, c, r, n = config.group_size, config.candidate_samples, config.random_samples, config.num_candidates
    models = (*fitted, _item_table(log))
    slot_stage = np.repeat(np.array([_IMPRESSION, _CANDIDATE, _RANDOM], dtype=np.int64), [s, c, r])
    partitions: list[Partition] = []
    with staged_directory(out_dir) as tmp:
        for week, role in zip(weeks, roles):
            rows = np.flatnonzero(req.week == week)
            rng = _week_rng(seed, week, 0)
            blocks = [
                _block_arrays(log, req, blk, rated[role], schema, models, config, slot_stage, rng)
                for blk in np.array_split(rows, max(1, -(-len(rows) // _BLOCK_ROWS)))
            ]
            arrays = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
            perm = np.argsort(_week_rng(seed, week, 1).random((len(rows), n)), axis=1)
            for k, a in arrays.items():
                if a.ndim == 2 and a.shape[1] == n:
                    arrays[k] = np.take_along_axis(a, perm, axis=1)
            start = week_start_date(week)
            part = Partition(
                name=f"week-{start}",
                role=role,
                num_requests=len(rows),
                start=start,
                end=str(np.datetime64(start) + np.timedelta64(6, "D")),
            )
            write_partition(tmp, schema, part, arrays)
            partitions.append(part)
        schema = schema.model_copy(update={"partitions": partitions})
        write_schema(tmp, schema)
    return schema


@torch.no_grad()
def _block_arrays(
    log: InteractionLog,
    req: RequestTable,
    rows: np.ndarray,
    rated: sp.csr_matrix,
    schema: DatasetSchema,
    models: tuple[DSSM, DIN, dict[str, torch.Tensor]],
    config: RankTowerSamplingConfig,
    slot_stage: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Store columns (candidate slots unshuffled: impressions, candidate, random samples) of requests ``rows``."""
    retriever, ranker, item_table = models
    s, c, r = config.group_size, config.candidate_samples, config.random_samples
    b, hist = len(rows), tuple(config.history_fields)
    if b == 0:  # an empty week: no model call
        n = config.num_candidates
        empty = np.zeros((0, n), np.int64)
        arrays = request_columns(log, req, rows, hist, empty, empty.astype(bool), empty, empty.astype(np.float32))
        arrays["soft_label"] = empty.astype(np.float32)
        return arrays
    blocked = rated[req.user[rows]].toarray()
    blocked[:, 0] = True
    np.put_along_axis(blocked, req.items[rows], True, axis=1)
    # the request side of the batch is all the retriever reads: candidates are the impressions for now
    query = to_batch(
        request_columns(
            log, req, rows, hist, req.items[rows], np.ones((b, s), bool), np.zeros((b, s)), np.zeros((b, s))
        ),
        schema,
    )
    scores = corpus_scores(retriever, query, item_table)
    cand, cand_valid = _top_allowed(scores, torch.from_numpy(~blocked), c)
    np.put_along_axis(blocked, cand, True, axis=1)  # (item 0 is blocked already)
    keys = torch.from_numpy(rng.random(blocked.shape))
    rand, rand_valid = _top_allowed(keys, torch.from_numpy(~blocked), r)
    items = np.concatenate([req.items[rows], cand, rand], axis=1)
    mask = np.concatenate([np.ones((b, s), bool), cand_valid, rand_valid], axis=1)
    stage = np.broadcast_to(slot_stage, (b, len(slot_stage)))
    imp = hard_labels(req.grade[rows], impression_label=config.impression_label, rating_weight=config.rating_weight)
    label = np.concatenate([imp, np.zeros((b, c + r), np.float32)], axis=1)
    arrays = request_columns(log, req, rows, hist, items, mask, stage, label)
    soft = ranker(to_batch(arrays, schema)).float().numpy()
    arrays["soft_label"] = np.where(mask, soft, 0.0).astype(np.float32)
    return arrays

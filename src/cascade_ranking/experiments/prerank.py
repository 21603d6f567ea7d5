"""The pre-ranking benchmark (``--task prerank``): RankTower's comparison and ablations on full-stage samples.

Yan & Li (2023), *RankTower*, arXiv 2407.12385: Table 1 compares pre-ranking models trained on full-stage
samples (Sec. 4.1); Tables 2-4 ablate the sample spaces, the ranking losses and the distillation. Here every
row is one ordinary :func:`~cascade_ranking.training.loop.train` run of a **one-stage cascade** (``keep = [K]``) on a
dataset built by :func:`~cascade_ranking.datasets.ranktower_sampling.build_ranktower_samples` (MovieLens-100K:
:func:`~cascade_ranking.datasets.prerank.prepare_prerank_movielens`), evaluated on the held-out test weeks.

**Rows** (:data:`TABLE1`, :data:`ABLATIONS`; model + method), as the paper's tables:

* Table 1: ``lr`` (:class:`~cascade_ranking.models.LR` + BCE), ``two_tower`` (DSSM + BCE), ``dat``
  (:class:`~cascade_ranking.models.DAT` + BCE, with its AMM and category-alignment losses), ``cold`` (COLD +
  BCE), ``inttower`` (:class:`~cascade_ranking.models.IntTower` + BCE, with its CIR loss), ``din`` (DIN + BCE;
  ours, not in the paper), ``arf`` (DSSM + the ARF loss: ARF is a loss, so it trains the two-tower model),
  ``ranktower`` (RankTower + its hybrid loss, with the dataset's soft labels); plus the untrained reference rows
  ``random`` and ``popularity``. BCE's positives are the impressions (the top funnel position).
* Table 2 (sampling): RankTower without the random samples, without the candidate samples, without both
  (masked out of the *training* partitions only); "full-stage sampling" is the ``ranktower`` row.
* Table 3 (ranking losses): the RankTower model with each loss alone on all samples: sorting
  (``ranktower_sort``), AM-Rankmax, Rankmax, Softmax, ApproxNDCG, RankNet; "hybrid" is the ``ranktower`` row.
* Table 4 (distillation): the hybrid loss with weighted-logloss or pairwise-logloss distillation, or without
  distillation (``lambda_1 = 0``); softmax distillation (eq. 14) is the ``ranktower`` row.
* Model or loss? (ours, not in the paper): the RankTower model trained with BCE, and the two-tower model (DSSM)
  trained with the hybrid loss (on the two-tower row's tuned point, :data:`POINT_OF`): together with the
  ``two_tower`` and ``ranktower`` rows, a 2 x 2 of model x loss that says which of the two carries a difference.

**Protocols** (:func:`dataset_protocol`, read from the dataset's provenance):

* ``paper`` (a dataset built with ``split="random"``, e.g. ``prepare_prerank_movielens(protocol="paper")``):
  RankTower's Sec. 5.1: test metrics per *user's* sample list (:func:`evaluate_user_lists`) at K = 100 and
  K = ``keep``, relevant = positive feedback; Adam lr 0.001 and embedding 16 (:data:`PAPER_TRAINING`, applied
  where the base configuration keeps the library's defaults) and the dataset's batch 64, 5 passes.
* ``time`` (weekly partitions): per-request metrics (:func:`evaluate_prerank`) with ground truth = the request's
  ``gt_num`` impressions: ``Recall@K = |top K ∩ impressions| / |impressions|``, ``NDCG@K`` with the hard label
  as gain, K = ``gt_num`` and ``keep``; the base configuration (Adam lr 0.01, embedding 8) and the dataset's
  training defaults.

**Tuning** (``tune``, on by default under the paper protocol): every Table 1 row first runs the same number of
grid points (:mod:`.prerank_tuning`: hidden units for the DNN rows, the learning rate for LR, hidden units and
alpha for RankTower), seed 0, each with early stopping on validation; the point with the best validation Recall@keep
is then run with every seed, and the ablation rows take RankTower's point. Other loss hyper-parameters are the
methods' defaults (:mod:`cascade_ranking.losses.ranktower`: ``lambdas = (0.1, 0.1, 1)``, SoftSort ``tau = 1``,
AM-Rankmax ``delta = 1``). Results print beside the paper's KuaiRand numbers (:data:`PAPER_KUAIRAND`).

Outputs in ``out_dir``: ``runs/<row>-seed<s>/`` (train run folders, reused when finished, plus
``prerank.json`` with the test metrics), ``data/<variant>/`` (the ablation datasets), ``results.json``,
``results.csv``, ``results.md`` (one section per table, and the tuning grid's results), the chart
``recall_at_<keep>.png`` and ``report.html``. The grid's runs are ``runs/tune_<row>__<point>-seed0``; a tuned
Table 1 row's other seeds sit beside its chosen point's folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.loader import iterate_partitions
from ..data.schema import DatasetSchema, Partition
from ..data.store import open_dataset
from ..datasets.prerank import derive_variant
from ..losses.ranktower import DEFAULT_LAMBDAS
from ..metrics import ndcg_at_k, stage_recall
from ..training.checkpoint import load_run
from ..training.config import EarlyStopping, TrainConfig
from ..training.distributed import resolve_device
from ..types import RequestBatch
from .prerank_tuning import TUNING_GRID, GridPoint, choose_points, tuned_rows, tuning_key, tuning_rows
from .results import markdown_table
from .runner import BenchmarkRow, finish, reference_scorers, run_rows

__all__ = [
    "ABLATIONS",
    "PAPER_KUAIRAND",
    "TABLE1",
    "PrerankRow",
    "evaluate_prerank",
    "evaluate_user_lists",
    "results_markdown",
    "run_prerank_benchmark",
]

log = logging.getLogger(__name__)

#: File with a run's pre-ranking test metrics, beside train's ``metrics.json``.
PRERANK_METRICS_FILE = "prerank.json"

TABLE_TITLES = {
    "table1": "Table 1: pre-ranking models on full-stage samples",
    "table2": "Table 2: sampling strategies (RankTower, samples masked out of the training partitions)",
    "table3": "Table 3: ranking losses (RankTower model, one loss each; hybrid = the ranktower row)",
    "table4": "Table 4: distillation losses (RankTower hybrid loss; softmax = the ranktower row)",
    "model_vs_loss": "Model or loss? (not in the paper: each model with the other's loss)",
}

#: The paper's KuaiRand numbers (Recall@100, NDCG@100) per row: Table 1-4 of Yan & Li (2023).
PAPER_KUAIRAND: dict[str, tuple[float, float]] = {
    "lr": (0.6713, 0.5027),
    "two_tower": (0.6902, 0.5258),
    "dat": (0.6955, 0.5312),
    "cold": (0.7011, 0.5349),
    "inttower": (0.6960, 0.5309),
    "arf": (0.7096, 0.5497),
    "ranktower": (0.7182, 0.5551),
    "w/o random": (0.7125, 0.5437),
    "w/o candidate": (0.7040, 0.5401),
    "w/o candidate & random": (0.6981, 0.5323),
    "sorting": (0.7128, 0.5516),
    "am-rankmax": (0.7132, 0.5507),
    "rankmax": (0.7105, 0.5492),
    "softmax": (0.7109, 0.5498),
    "approx_ndcg": (0.7006, 0.5436),
    "ranknet": (0.7072, 0.5452),
    "distill weighted logloss": (0.7130, 0.5519),
    "distill pairwise logloss": (0.7071, 0.5432),
    "no distillation": (0.7108, 0.5495),
}


@dataclass(frozen=True)
class PrerankRow:
    """One row of the pre-ranking benchmark.

    Attributes:
        key: row name in the results.
        model: registered stage model.
        method: registered loss.
        table: ``"table1"`` .. ``"table4"``.
        loss: loss hyper-parameters (``TrainConfig.loss``).
        variant: training-data variant (:data:`VARIANTS`), ``None`` = the dataset as built.
    """

    key: str
    model: str
    method: str
    table: str = "table1"
    loss: dict = field(default_factory=dict)
    variant: str | None = None


TABLE1 = (
    PrerankRow("lr", "lr", "bce"),
    PrerankRow("two_tower", "dssm", "bce"),
    PrerankRow("dat", "dat", "bce"),
    PrerankRow("cold", "cold", "bce"),
    PrerankRow("inttower", "inttower", "bce"),
    PrerankRow("din", "din", "bce"),
    PrerankRow("arf", "dssm", "arf"),
    PrerankRow("ranktower", "ranktower", "ranktower"),
)
ABLATIONS = (
    PrerankRow("w/o random", "ranktower", "ranktower", "table2", variant="no_random"),
    PrerankRow("w/o candidate", "ranktower", "ranktower", "table2", variant="no_candidate"),
    PrerankRow("w/o candidate & random", "ranktower", "ranktower", "table2", variant="no_candidate_random"),
    PrerankRow("sorting", "ranktower", "ranktower_sort", "table3"),
    PrerankRow("am-rankmax", "ranktower", "am_rankmax", "table3"),
    PrerankRow("rankmax", "ranktower", "rankmax", "table3"),
    PrerankRow("softmax", "ranktower", "softmax", "table3"),
    PrerankRow("approx_ndcg", "ranktower", "approx_ndcg", "table3"),
    PrerankRow("ranknet", "ranktower", "ranknet", "table3"),
    PrerankRow("distill weighted logloss", "ranktower", "ranktower", "table4",
               loss={"distillation": "weighted_logloss"}),
    PrerankRow("distill pairwise logloss", "ranktower", "ranktower", "table4",
               loss={"distillation": "pairwise_logloss"}),
    PrerankRow("no distillation", "ranktower", "ranktower", "table4", loss={"lambdas": [0.0, *DEFAULT_LAMBDAS[1:]]}),
    PrerankRow("ranktower model + bce", "ranktower", "bce", "model_vs_loss"),
    PrerankRow("two_tower model + hybrid loss", "dssm", "ranktower", "model_vs_loss"),
)  # fmt: skip
#: The Table 1 row whose tuned grid point an ablation row takes, unless :data:`POINT_OF` names another.
SHARED_POINT = "ranktower"
#: Ablation rows that take another Table 1 row's tuned grid point than :data:`SHARED_POINT`'s.
POINT_OF = {"two_tower model + hybrid loss": "two_tower"}
#: The row each ablation table compares against (its first line in the paper), run once in Table 1.
TABLE_BASE_ROW = {"table2": "ranktower", "table3": "ranktower", "table4": "ranktower", "model_vs_loss": "ranktower"}


@torch.no_grad()
def evaluate_prerank(
    score: Callable[[RequestBatch], torch.Tensor],
    data: Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    *,
    ks: Sequence[int],
    batch_size: int = 4096,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Recall@K and NDCG@K of one scorer over every request of ``partitions`` (see the module docstring).

    Args:
        score: maps a batch to ``[B, N]`` scores.
        data, schema, partitions: what to evaluate.
        ks: cutoffs.
        batch_size: requests per batch.
        seed: seeds the loader's candidate-slot shuffle (which breaks score ties).
        device: where to score.

    Returns:
        ``{"recall@K": ..., "ndcg@K": ..., "requests": ...}``: means over the requests with a valid candidate.
    """
    gt_num = schema.gt_num
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    requests = nonempty = 0
    rng = np.random.default_rng(seed)
    for batch in iterate_partitions(data, schema, partitions, batch_size=batch_size, shuffle=False, rng=rng):
        batch = batch.to(device)
        s = score(batch).float()
        has = batch.mask.any(-1)
        requests += batch.batch_size
        nonempty += int(has.sum())
        for k in ks:
            sums[f"recall@{k}"] += float(stage_recall(s, batch.label, batch.mask, k, gt_num)[has].sum())
            sums[f"ndcg@{k}"] += float(ndcg_at_k(s, batch.label, batch.mask, k)[has].sum())
    out = {name: total / nonempty if nonempty else math.nan for name, total in sums.items()}
    out["requests"] = requests
    return out


@torch.no_grad()
def evaluate_user_lists(
    score: Callable[[RequestBatch], torch.Tensor],
    data: Path,
    schema: DatasetSchema,
    partitions: Sequence[Partition],
    *,
    ks: Sequence[int],
    relevant_label: float,
    user_field: str = "user_id",
    batch_size: int = 4096,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """RankTower's metrics (Sec. 5.1.2): Recall@K and NDCG@K over each *user's* sample list, averaged over users.

    A user's list is every valid sample of all their requests in ``partitions`` (impressions, candidate and
    random samples), ranked by score (ties in random order, seeded). ``Recall@K`` = relevant samples in the top
    ``K`` / relevant samples, relevant = hard label ``>= relevant_label`` (positive feedback); ``NDCG@K`` uses the
    hard label as gain with ``log2(rank + 1)`` discounts (scikit-learn's ``ndcg_score``). Users without a relevant
    sample are skipped. **Short lists**: when a list holds at most ``K`` samples, every sample is in the top ``K``
    and its Recall@K is 1 by this definition; ``short@K`` reports the share of such users.

    Args:
        score: maps a batch to ``[B, N]`` scores.
        data, schema, partitions: what to evaluate.
        ks: cutoffs.
        relevant_label: the lowest hard label that counts as relevant.
        user_field: the user field whose ids group requests into lists.
        batch_size: requests per batch.
        seed: seeds the loader's slot shuffle and the tie order.
        device: where to score.

    Returns:
        ``{"recall@K", "ndcg@K", "short@K" for every K, "users", "requests"}``.
    """
    users, scores, labels = [], [], []
    requests = 0
    rng = np.random.default_rng(seed)
    for batch in iterate_partitions(data, schema, partitions, batch_size=batch_size, shuffle=False, rng=rng):
        batch = batch.to(device)
        s = score(batch).double()
        m = batch.mask
        requests += batch.batch_size
        users.append(batch.user[user_field].unsqueeze(-1).expand_as(m)[m].cpu().numpy())
        scores.append(s[m].cpu().numpy())
        labels.append(batch.label.double()[m].cpu().numpy())
    out: dict[str, float] = {}
    u, s_all, y_all = (np.concatenate(a) if a else np.zeros(0) for a in (users, scores, labels))
    order = np.lexsort((rng.random(len(u)), -s_all, u))  # per user: by score, ties at random
    u, s_all, y_all = u[order], s_all[order], y_all[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1] if len(u) else np.zeros(0, int)
    per_user = [(a, b) for a, b in zip(starts, np.r_[starts[1:], len(u)]) if (y_all[a:b] >= relevant_label).any()]
    for k in ks:
        recall, ndcg, short = [], [], []
        for a, b in per_user:
            y = y_all[a:b]
            rel = y >= relevant_label
            recall.append(rel[:k].sum() / rel.sum())
            disc = 1.0 / np.log2(np.arange(2, min(k, len(y)) + 2))
            ideal = (np.sort(y)[::-1][:k] * disc).sum()
            ndcg.append((y[:k] * disc).sum() / ideal if ideal > 0 else 0.0)
            short.append(len(y) <= k)
        out[f"recall@{k}"] = float(np.mean(recall)) if recall else math.nan
        out[f"ndcg@{k}"] = float(np.mean(ndcg)) if ndcg else math.nan
        out[f"short@{k}"] = float(np.mean(short)) if short else math.nan
    out["users"] = len(per_user)
    out["requests"] = requests
    return out


def _select_rows(models: Sequence[str] | None, ablations: bool) -> list[PrerankRow]:
    known = {r.key: r for r in TABLE1}
    aliases = {"dssm": "two_tower", "two-tower": "two_tower"}
    if models is None:
        rows = list(TABLE1)
    else:
        keys = [aliases.get(m.lower(), m.lower()) for m in models]
        unknown = [m for m, k in zip(models, keys) if k not in known]
        if unknown:
            raise ValueError(f"unknown pre-ranking rows {unknown}; known rows: {', '.join(known)}")
        rows = [known[k] for k in dict.fromkeys(keys)]
    rows += list(ABLATIONS) if ablations else []
    if not rows:
        raise ValueError("no pre-ranking row to run: give models or set ablations")
    return rows


def _benchmark_rows(rows: Sequence[PrerankRow], data: Path, out_dir: Path, keep: int) -> list[BenchmarkRow]:
    """The runner's rows: each row's model, method, loss and training data (an ablation's variant)."""
    out = []
    for row in rows:
        updates = {"method": row.method, "models": [row.model], "keep": [keep], "loss": dict(row.loss)}
        row_data = data if row.variant is None else derive_variant(data, out_dir / "data" / row.variant, row.variant)
        out.append(BenchmarkRow(row.key, updates, row_data, row.table))
    return out


def dataset_protocol(schema: DatasetSchema) -> str:
    """``"paper"`` for a dataset split at random per user (RankTower's protocol), else ``"time"``."""
    config = schema.provenance.get("config") or {}
    return "paper" if config.get("split") == "random" else "time"


def _relevant_label(schema: DatasetSchema) -> float:
    """The lowest hard label with positive feedback: impression label + one unit of feedback."""
    config = schema.provenance.get("config") or {}
    return float(config.get("impression_label", 1.0)) + float(config.get("rating_weight", 1.0))


def _metrics_fn(schema: DatasetSchema, ks: Sequence[int]):
    """The protocol's test metrics: per user's sample list (paper) or per request (time)."""
    if dataset_protocol(schema) == "paper":
        rel = _relevant_label(schema)
        return lambda score, data, parts, **kw: evaluate_user_lists(
            score, data, schema, parts, ks=ks, relevant_label=rel, **kw
        )
    return lambda score, data, parts, **kw: evaluate_prerank(score, data, schema, parts, ks=ks, **kw)


def _evaluator(data: Path, schema: DatasetSchema, ks: Sequence[int], device: torch.device):
    """The runner's evaluation of a trained row: its model's Recall@K / NDCG@K on ``data``'s validation and test
    partitions (the validation metrics choose a tuning grid's point)."""
    metrics_fn = _metrics_fn(schema, ks)

    def evaluate(config: TrainConfig, run_dir: Path, train_metrics: dict) -> dict:
        model = load_run(run_dir, data=data).cascade.to(device).eval().stages[0].model
        out = {}
        for role in ("valid", "test"):
            parts = schema.partitions_with_role(role)
            if parts:
                out[role] = metrics_fn(model, data, parts, seed=config.seed, batch_size=config.eval_batch_size,
                                       device=device)  # fmt: skip
        row_config = {"method": config.method, "model": config.models[0] if config.models else None,
                      "hidden": config.hidden, "lr": config.lr, "model_options": config.model_options}  # fmt: skip
        stopping = train_metrics.get("early_stopping") or {}
        return {
            "row_config": {**row_config, "loss": config.loss},
            "train_seconds": train_metrics["train_seconds"],
            "steps": train_metrics["steps"],
            "best_step": stopping.get("best_step"),
            **out,
        }

    return evaluate


def _validation(data: Path, schema: DatasetSchema, ks: Sequence[int], metric: str, device: torch.device):
    """Early stopping's metric: the protocol's ``metric`` on the validation partitions, of the cascade's stage."""
    valid = schema.partitions_with_role("valid")
    metrics_fn = _metrics_fn(schema, ks)
    return lambda cascade: metrics_fn(cascade.stages[0].model, data, valid, seed=0, device=device)[metric]


#: Under the paper protocol with early stopping: at most this many times the dataset's passes (MovieLens variant:
#: 15 instead of 5), so that validation, not the pass count, ends training.
MAX_PASSES_FACTOR = 3
#: Checks without a validation gain before a run stops (each check half a pass apart: two passes).
PATIENCE = 4


def _with_early_stopping(base: TrainConfig, schema: DatasetSchema, metric: str) -> TrainConfig:
    """``base`` with early stopping on ``metric`` checked twice a pass, patience :data:`PATIENCE`, and at most
    :data:`MAX_PASSES_FACTOR` times the dataset's passes (unless ``base`` sets its own early stopping / passes).

    RankTower's Sec. 5.1.4 stops early on validation without saying how often it checks; twice a pass over the
    training partitions (40 steps on the MovieLens variant at batch 64) is ours. At the dataset's 5 passes most
    rows were still improving at their last check (the grid's best step was the last step in 22 of 29 runs), so
    the cap is 15 passes and validation decides. **The metric is Recall@keep (Recall@20), not the paper's
    Recall@100**, for early stopping and for the grid's choice alike: each user's validation list holds 10% of
    their requests (half the test list), and on the MovieLens variant 76% of the users' validation lists hold at
    most 100 samples, so their Recall@100 is 1 whatever the model (measured ``short@100`` = 0.76; 0.16 on test).
    Recall@20 is never short there and is what the stage's ``keep`` serves.
    """
    updates: dict = {}
    if base.early_stopping is None:
        batch = base.batch_size or schema.train_defaults.batch_size
        steps = sum(math.ceil(p.num_requests / batch) for p in schema.partitions_with_role("train"))
        updates["early_stopping"] = EarlyStopping(every=max(1, steps // 2), patience=PATIENCE, metric=metric)
        if base.passes is None:
            updates["passes"] = MAX_PASSES_FACTOR * schema.train_defaults.passes
    return base.model_copy(update=updates)


#: RankTower's training protocol (Sec. 5.1.4) where the base configuration keeps the library's defaults:
#: Adam lr 0.001 and embedding size max(floor(log2 V), 16) = 16 on MovieLens-100K (every vocabulary < 2**17).
PAPER_TRAINING = {"lr": 1e-3, "emb_dim": 16}


def _protocol_base(base: TrainConfig, protocol: str) -> TrainConfig:
    if protocol != "paper":
        return base
    defaults = TrainConfig()
    updates = {k: v for k, v in PAPER_TRAINING.items() if getattr(base, k) == getattr(defaults, k)}
    return base.model_copy(update=updates)


def run_prerank_benchmark(
    *,
    data: Path,
    out_dir: Path,
    repeats: int = 1,
    models: list[str] | None = None,
    ablations: bool = False,
    on_run: Callable[[str, int, dict], None] | None = None,
    base: TrainConfig | None = None,
    ks: Sequence[int] | None = None,
    tune: bool | None = None,
    grid: Mapping[str, Sequence[GridPoint]] | None = None,
) -> dict:
    """Train and evaluate the pre-ranking rows ``repeats`` times (seeds 0..R-1); write and return the results.

    Args:
        data: a pre-ranking dataset (:func:`~cascade_ranking.datasets.prerank.prepare_prerank_movielens` or
            :func:`~cascade_ranking.datasets.ranktower_sampling.build_ranktower_samples`): one-stage ``keep``,
            funnel positions ``random``, ``candidate``, ``impression``.
        out_dir: output folder (see the module docstring).
        repeats: seeds per row.
        models: Table 1 rows to run (``lr``, ``two_tower`` (alias ``dssm``), ``cold``, ``din``, ``arf``,
            ``ranktower``); ``None`` = all.
        ablations: also run Tables 2-4 (:data:`ABLATIONS`, eight RankTower rows).
        on_run: called after each run with ``(row, seed, {"test": metrics, ...})``; ``metrics`` holds
            ``recall@K`` and ``ndcg@K`` of every cutoff.
        base: configuration shared by every run (``method``, ``models``, ``keep``, ``loss``, ``seed`` and
            ``data`` are set per row); default :class:`~cascade_ranking.training.config.TrainConfig()`.
        ks: cutoffs (default ``(gt_num, keep)``).
        tune: search each Table 1 row's grid on validation first (:mod:`.prerank_tuning`; the ablation rows take
            RankTower's chosen point); ``None`` = on under the paper protocol. Under the paper protocol every
            run also stops early on validation (:func:`_with_early_stopping`) unless ``base`` sets its own.
        grid: the grid per Table 1 row (default :data:`~.prerank_tuning.TUNING_GRID`).

    Returns:
        ``{"task", "dataset", "data", "stages", "keep", "gt_num", "num_candidates", "ks", "repeats",
        "primary_metric", "metrics", "runs", "tables", "summary"}``, and ``"tuning"`` (one entry per grid point:
        row, point, validation and test metrics, ``chosen``) when tuned.

    Raises:
        ValueError: ``repeats`` not positive, unknown rows, a dataset that is not a one-stage pre-ranking
            dataset, or ``tune`` on a dataset without a validation partition.
    """
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    selected = _select_rows(models, ablations)
    data, out_dir = Path(data), Path(out_dir)
    schema = open_dataset(data)
    if len(schema.keep) != 1 or "impression" not in schema.funnel_positions:
        raise ValueError(
            f"{data}: not a pre-ranking dataset (keep={schema.keep}, funnel positions {schema.funnel_positions}); "
            "build one with prepare_prerank_movielens or build_ranktower_samples"
        )
    keep = schema.keep[0]
    protocol = dataset_protocol(schema)
    paper_k = 100  # Sec. 5.1.2: K = 100 for every metric
    ks = sorted({int(k) for k in (ks or ((keep, paper_k) if protocol == "paper" else (schema.gt_num, keep)))} | {keep})
    primary = f"recall@{paper_k}" if protocol == "paper" else f"recall@{keep}"
    selection = f"recall@{keep}"  # on validation: see _with_early_stopping
    base = _protocol_base(base or TrainConfig(), protocol)
    has_valid = bool(schema.partitions_with_role("valid"))
    tune = protocol == "paper" and has_valid if tune is None else tune
    if tune and not has_valid:
        raise ValueError(f"{data}: tuning needs a partition with role 'valid'; the dataset has none")
    if protocol == "paper" and has_valid:
        base = _with_early_stopping(base, schema, selection)
    device = resolve_device(base.device)
    validation = None  # the time protocol's early stopping (set in base) uses train's validation metrics
    if base.early_stopping is not None and protocol == "paper":
        validation = _validation(data, schema, ks, base.early_stopping.metric, device)
    rows = _benchmark_rows(selected, data, out_dir, keep)
    common = dict(base=base, data=data, out_dir=out_dir, on_run=on_run, validation=validation,
                  evaluate=_evaluator(data, schema, ks, device), record=PRERANK_METRICS_FILE)  # fmt: skip
    tuning: list[dict] = []
    if tune:
        rows, tuning = _tune(rows, grid or TUNING_GRID, selection, common, keep)
    last_table1 = max((i for i, r in enumerate(rows) if r.table == "table1"), default=-1)
    runs: list[dict] = []
    for row, seed, record in run_rows(rows, repeats=repeats, **common):
        runs.append({"row": row.key, "table": row.table, "seed": seed, **record["test"]})
        runs[-1]["train_seconds"] = record["train_seconds"]
        if last_table1 >= 0 and row is rows[last_table1] and seed == repeats - 1:  # the reference rows close Table 1
            runs += _reference_runs(data, schema, ks, repeats, device)
    results = {
        "task": "prerank",
        "dataset": schema.name,
        "data": str(data),
        "stages": ["prerank"],
        "keep": [keep],
        "gt_num": schema.gt_num,
        "num_candidates": schema.num_candidates,
        "ks": ks,
        "repeats": repeats,
        "protocol": protocol,
        "primary_metric": primary,
        "selection_metric": selection,
        "metrics": _metric_descriptions(protocol, schema),
        "paper": {"dataset": "KuaiRand", "recall@100, ndcg@100": PAPER_KUAIRAND},
        "runs": runs,
        "tables": _tables(runs),
        **({"tuning": tuning} if tune else {}),
        "early_stopping": base.early_stopping.model_dump(mode="json") if base.early_stopping else None,
    }
    title = f"{schema.name}: pre-ranking, keep {keep} of {schema.num_candidates}, {repeats} seed(s)"
    return finish(out_dir, results, title=title, markdown=results_markdown)


def _tune(
    rows: list[BenchmarkRow], grid: Mapping[str, Sequence[GridPoint]], selection: str, common: dict, keep: int
) -> tuple[list[BenchmarkRow], list[dict]]:
    """Run every Table 1 row's grid once (seed 0), choose each row's point by validation ``selection``; return the
    tuned rows and one record per grid point. An ablation takes RankTower's point (:data:`POINT_OF`: or another
    row's), so that row's grid runs whenever the ablation is asked for."""
    table1 = [r for r in rows if r.table == "table1"]
    sources = {POINT_OF.get(r.key, SHARED_POINT) for r in rows if r.table != "table1"}  # the ablations' points
    missing = [r for r in TABLE1 if r.key in sources and all(t.key != r.key for t in table1)]
    table1 += _benchmark_rows(missing, common["data"], common["out_dir"], keep)
    valid, tuning = {}, []
    points = {tuning_key(r.key, p): (r.key, p) for r in table1 if r.key in grid for p in grid[r.key]}
    for row, _seed, record in run_rows(tuning_rows(table1, grid), repeats=1, **common):
        valid[row.key] = record["valid"][selection]
        key, point = points[row.key]
        tuning.append({"row": key, "point": point.label, "valid": record["valid"], "test": record["test"],
                       "steps": record.get("steps"), "best_step": record.get("best_step"),
                       "train_seconds": record["train_seconds"]})  # fmt: skip
    best = choose_points(table1, grid, valid)
    for entry in tuning:
        entry["chosen"] = best[entry["row"]].label == entry["point"]
    log.info("tuned points: %s", {k: p.label for k, p in best.items()})
    return tuned_rows(rows, best, shared=SHARED_POINT, point_of=POINT_OF), tuning


def _tables(runs: list[dict]) -> dict[str, list[str]]:
    """Table name -> its rows, in run order."""
    tables: dict[str, list[str]] = {}
    for run in runs:
        if run["row"] not in tables.setdefault(run["table"], []):
            tables[run["table"]].append(run["row"])
    return tables


def _first_stage(scorer: torch.nn.Module) -> Callable[[RequestBatch], torch.Tensor]:
    """``batch -> scorer(batch)[0]``: the first stage's ``[B, N]`` scores of a reference scorer."""
    return lambda batch: scorer(batch)[0]


def _metric_descriptions(protocol: str, schema: DatasetSchema) -> dict[str, str]:
    if protocol == "paper":
        return {
            "protocol": "RankTower's (Sec. 5.1): each user's requests split 70/10/20 at random; Adam lr 0.001, "
            "batch 64, embedding 16",
            "recall@K": f"per user's test sample list: relevant (hard label >= {_relevant_label(schema):g}, positive "
            "feedback) in the top K / relevant; mean over users",
            "ndcg@K": "per user's test sample list, hard label as gain; mean over users",
            "short@K": "share of users whose test list holds <= K samples (their Recall@K is 1 by definition)",
            "paper": "the paper's KuaiRand numbers (Recall@100 / NDCG@100)",
        }
    return {
        "protocol": "weekly time split (test = the last weeks)",
        "recall@K": f"|top K by score ∩ impressions| / |impressions| (gt_num = {schema.gt_num} impressions per "
        "request)",
        "ndcg@K": "NDCG@K with the hard label as gain (scikit-learn's ndcg_score)",
    }


def _reference_runs(data, schema, ks, repeats, device) -> list[dict]:
    """The untrained reference rows of Table 1: random scores and training-week impression counts."""
    test = schema.partitions_with_role("test")
    metrics_fn = _metrics_fn(schema, ks)
    runs = []
    for name, seed, scorer in reference_scorers(data, schema, 1, repeats, device):
        m = metrics_fn(_first_stage(scorer), data, test, seed=seed, device=device)
        runs.append({"row": name, "table": "table1", "seed": seed, **m})
    return runs


def results_markdown(results: dict) -> str:
    """The results as Markdown: a header with the metric definitions, then one table per benchmark table."""
    lines = [
        f"# {results['dataset']}: pre-ranking, keep {results['keep'][0]} of {results['num_candidates']} "
        f"candidates per request, {results['repeats']} seed(s)",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in results["metrics"].items()]
    primary = results["primary_metric"]
    for table, rows in results["tables"].items():
        base = TABLE_BASE_ROW.get(table)
        if base in results["summary"] and base not in rows:
            rows = [base, *rows]
        lines += ["", f"## {TABLE_TITLES.get(table, table)}", ""]
        lines.append(_table_with_paper({r: results["summary"][r] for r in rows}, primary).rstrip("\n"))
    if results.get("tuning"):
        selection = results.get("selection_metric", primary)
        lines += ["", *_tuning_markdown(results["tuning"], selection, primary, results.get("early_stopping"))]
    return "\n".join(lines) + "\n"


def _tuning_markdown(tuning: list[dict], selection: str, primary: str, stopping: dict | None) -> list[str]:
    """The grid search: every point's validation ``selection`` and test ``primary`` (seed 0), the chosen one in
    bold."""
    lines = [
        "## Tuning: the same grid budget for every row, chosen on validation (seed 0)",
        "",
        (f"Early stopping on validation {stopping['metric']}, checked every {stopping['every']} steps, patience "
         f"{stopping['patience']}; the best check's weights are kept." if stopping else "No early stopping."),
        "",
        f"| row | point | valid {selection} | valid {primary} | test {primary} | best step / steps | train_seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for t in tuning:
        mark = "**" if t["chosen"] else ""
        cells = [t["row"], f"{mark}{t['point']}{mark}", f"{mark}{t['valid'][selection]:.4f}{mark}",
                 f"{t['valid'][primary]:.4f}", f"{t['test'][primary]:.4f}", f"{t.get('best_step')} / {t.get('steps')}",
                 f"{t['train_seconds']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table_with_paper(summary: dict, primary: str) -> str:
    """:func:`markdown_table` with the paper's KuaiRand Recall@100 / NDCG@100 as two more columns."""
    lines = markdown_table(summary, primary).rstrip("\n").split("\n")
    out = [lines[0] + " paper recall@100 | paper ndcg@100 |", lines[1] + "---:|---:|"]
    for line, row in zip(lines[2:], summary):
        paper = PAPER_KUAIRAND.get(row)
        out.append(line + (f" {paper[0]:.4f} | {paper[1]:.4f} |" if paper else " | |"))
    return "\n".join(out) + "\n"

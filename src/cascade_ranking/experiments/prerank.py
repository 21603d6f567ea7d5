"""The pre-ranking benchmark (``--task prerank``): RankTower's comparison and ablations on full-stage samples.

Yan & Li (2023), *RankTower*, arXiv 2407.12385: Table 1 compares pre-ranking models trained on full-stage
samples (Sec. 4.1); Tables 2-4 ablate the sample spaces, the ranking losses and the distillation. Here every
row is one ordinary :func:`~cascade_ranking.training.loop.train` run of a **one-stage cascade** (``keep = [K]``) on a
dataset built by :func:`~cascade_ranking.datasets.ranktower_sampling.build_ranktower_samples` (MovieLens-100K:
:func:`prepare_prerank_movielens`), evaluated on the held-out test weeks.

**Rows** (:data:`TABLE1`, :data:`ABLATIONS`; model + method):

* Table 1: ``lr`` (:class:`~cascade_ranking.models.LR` + BCE), ``two_tower`` (DSSM + BCE), ``cold`` (COLD +
  BCE), ``din`` (DIN + BCE), ``arf`` (DSSM + the ARF loss: the paper lists ARF as a method, and ARF is a
  loss, so it trains the two-tower model), ``ranktower`` (RankTower + its hybrid loss, with the dataset's soft
  labels); plus the untrained reference rows ``random`` and ``popularity`` (rating counts on the training
  weeks). BCE's positives are the impressions (the top funnel position), its negatives every other sample.
* Table 2 (sampling): RankTower trained without the random samples (``rt w/o random``), without the candidate
  samples (``rt w/o candidate``); those slots are masked out of the *training* weeks only, validation and
  test weeks are unchanged.
* Table 3 (losses): the RankTower model with each ranking loss alone: ``distill only``
  (``ranktower_distill``), ``sort only`` (``ranktower_sort``), ``rankmax only``, ``am-rankmax only``.
* Table 4 (distillation): the hybrid loss without distillation (``rt w/o distill``: ``lambdas = (0, 0.1, 1)``,
  the default weights with ``lambda_1 = 0``), and with hard-label distillation (``rt hard-label distill``: the
  teacher is the hard label instead of the ranker's soft label; the ``soft_label`` column is dropped, so the
  loss falls back to the label).

Every run uses the base :class:`~cascade_ranking.training.config.TrainConfig` (Adam, lr 0.01, embedding 8, hidden 128)
and the dataset's training defaults (MovieLens-100K: batch 256, 3 passes over the 26 training weeks) and the
methods' default hyper-parameters. RankTower's (:mod:`cascade_ranking.losses.ranktower`): ``lambdas =
(0.1, 0.1, 1)`` and SoftSort ``tau = 10``, chosen on the *validation* weeks of this dataset (never the test
weeks), ``T_d = 1``, ``alpha = 1``, ``delta = 0.1``; the one-term rows of Table 3 use the same ``tau``,
``T_d``, ``alpha``, ``delta``.

**Metrics** (test weeks, every request; :func:`evaluate_prerank`), with ground truth = the request's
``gt_num`` impressions (the rated items; the top ``gt_num`` by hard label):

* ``Recall@K = |top K by score ∩ impressions| / |impressions|`` (:func:`~cascade_ranking.metrics.
  stage_recall`, whose denominator ``min(gt_num, n_valid)`` is the number of impressions here);
* ``NDCG@K`` with the hard label as gain (:func:`~cascade_ranking.metrics.ndcg_at_k`): rewards putting
  impressions first *and* ordering them by rating.

The paper reports K = 100 over a user's whole candidate set; our requests hold ``N = 50`` candidates (10
impressions, 20 candidate, 20 random samples), so we report K = ``keep`` = 20 (what the pre-ranking stage
passes on, 40% of N) and K = ``gt_num`` = 10 (Recall@10 is then also the precision). In the result files,
``joint_recall`` is Recall@``keep``: for a one-stage cascade the joint recall of
:class:`~cascade_ranking.metrics.CascadeMetrics` is exactly the stage's Recall@K; the key is kept so that
:func:`~cascade_ranking.experiments.results.write_results` (table, CSV, JSON, chart) serves this task unchanged.

Outputs in ``out_dir``: ``runs/<row>-seed<s>/`` (train run folders, reused when finished, plus
``prerank.json`` with the test metrics), ``data/<variant>/`` (the ablation datasets), ``results.json``,
``results.csv``, ``results.md`` (one section per table) and ``joint_recall.png``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import write_text_atomic
from ..data.loader import iterate_partitions
from ..data.schema import DatasetSchema, Partition, TrainDefaults
from ..data.store import open_dataset, read_partition, write_partition, write_schema
from ..datasets.ranktower_sampling import RankTowerSamples, RankTowerSamplingConfig, build_ranktower_samples
from ..losses.ranktower import DEFAULT_LAMBDAS
from ..metrics import ndcg_at_k, stage_recall
from ..training.checkpoint import load_run
from ..training.config import TrainConfig
from ..training.distributed import resolve_device
from ..training.evaluate import PopularityScorer, RandomScorer
from ..training.loop import train
from ..training.runfiles import METRICS_FILE
from ..types import RequestBatch
from .results import markdown_table, summarize, write_results

__all__ = [
    "ABLATIONS",
    "PRERANK_DATASET_NAME",
    "TABLE1",
    "VARIANTS",
    "PrerankRow",
    "derive_variant",
    "evaluate_prerank",
    "prepare_prerank_movielens",
    "run_prerank_benchmark",
]

log = logging.getLogger(__name__)

#: Name of the MovieLens-100K pre-ranking dataset (versioned with the MovieLens dataset version).
PRERANK_DATASET_NAME = "movielens-100k-v1-prerank"
#: File with a run's pre-ranking test metrics, beside train's ``metrics.json``.
PRERANK_METRICS_FILE = "prerank.json"

TABLE_TITLES = {
    "table1": "Table 1: pre-ranking models on full-stage samples",
    "table2": "Table 2: sample spaces (RankTower, samples masked out of the training weeks)",
    "table3": "Table 3: ranking losses (RankTower model, one loss each)",
    "table4": "Table 4: distillation (RankTower hybrid loss)",
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
    PrerankRow("cold", "cold", "bce"),
    PrerankRow("din", "din", "bce"),
    PrerankRow("arf", "dssm", "arf"),
    PrerankRow("ranktower", "ranktower", "ranktower"),
)
ABLATIONS = (
    PrerankRow("rt w/o random", "ranktower", "ranktower", "table2", variant="no_random"),
    PrerankRow("rt w/o candidate", "ranktower", "ranktower", "table2", variant="no_candidate"),
    PrerankRow("distill only", "ranktower", "ranktower_distill", "table3"),
    PrerankRow("sort only", "ranktower", "ranktower_sort", "table3"),
    PrerankRow("rankmax only", "ranktower", "rankmax", "table3"),
    PrerankRow("am-rankmax only", "ranktower", "am_rankmax", "table3"),
    PrerankRow("rt w/o distill", "ranktower", "ranktower", "table4", loss={"lambdas": [0.0, *DEFAULT_LAMBDAS[1:]]}),
    PrerankRow("rt hard-label distill", "ranktower", "ranktower", "table4", variant="hard_teacher"),
)
#: Training-data variants of the ablations: name -> (funnel positions masked in training weeks, drop soft labels).
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "no_random": (("random",), False),
    "no_candidate": (("candidate",), False),
    "hard_teacher": ((), True),
}
REFERENCE_ROWS = ("random", "popularity")


# ------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------
def prepare_prerank_movielens(
    out_dir: Path,
    *,
    src: Path | None = None,
    seed: int = 0,
    url: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
    config: RankTowerSamplingConfig | None = None,
    threads: int | None = None,
) -> RankTowerSamples:
    """Build the MovieLens-100K full-stage pre-ranking dataset in ``out_dir`` (about half a minute on 2 CPUs).

    Reads ``src`` (any layout :func:`~cascade_ranking.datasets.movielens.read_movielens` accepts) or the cached
    GroupLens download (fetched from ``url`` on first use), checks it is MovieLens-100K and builds the dataset
    with the history fields ``item_id`` and ``genre`` (as the cascade dataset) and training defaults batch
    256, 3 passes.

    Raises:
        DatasetUnavailableError: no ``src`` and the download failed.
        DataFormatError: ``src`` is malformed or not MovieLens-100K.
    """
    from ..datasets.movielens import (
        ML100K_URL,
        check_ml100k,
        download_movielens,
        movielens_log,
        movielens_provenance,
        read_movielens,
    )

    if src is None:
        src = download_movielens(url or ML100K_URL, cache_dir, progress=progress)
    tables = read_movielens(src)
    check_ml100k(tables)
    config = config or RankTowerSamplingConfig(history_fields=("item_id", "genre"))
    return build_ranktower_samples(
        movielens_log(tables),
        out_dir,
        name=PRERANK_DATASET_NAME,
        seed=seed,
        config=config,
        train_defaults=TrainDefaults(batch_size=256, passes=3),
        provenance=movielens_provenance(tables),
        threads=threads,
    )


def derive_variant(data: Path, out_dir: Path, variant: str) -> Path:
    """Write the training-data variant ``variant`` (:data:`VARIANTS`) of the dataset ``data`` to ``out_dir``.

    ``no_random`` / ``no_candidate``: in the training partitions, the slots at that funnel position become
    padding (``mask`` False; ids, stage, labels and soft labels 0); validation and test partitions are copied
    unchanged. ``hard_teacher``: every partition without its ``soft_label`` column. An existing copy of the
    same variant of the same dataset is reused.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: unknown ``variant`` or a funnel position the dataset does not have.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {sorted(VARIANTS)}")
    schema = open_dataset(data)
    positions, drop_soft = VARIANTS[variant]
    missing = [p for p in positions if p not in schema.funnel_positions]
    if missing:
        raise ValueError(f"variant {variant!r}: {data} has no funnel position {missing} ({schema.funnel_positions})")
    masked = [schema.funnel_positions.index(p) for p in positions]
    provenance = {**schema.provenance, "variant": variant, "variant_of": str(data)}
    target = schema.model_copy(update={"provenance": provenance})
    if (out_dir / "schema.json").is_file():
        try:
            if open_dataset(out_dir).provenance == provenance:
                return out_dir
        except ValueError:
            pass
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in schema.partitions:
        arrays = read_partition(data, schema, part)
        if drop_soft:
            arrays.pop("soft_label", None)
        if masked and part.role == "train":
            drop = np.isin(arrays["stage"], masked) & arrays["mask"]
            arrays["mask"] = arrays["mask"] & ~drop
            for name, a in arrays.items():
                if a.ndim == 2 and a.shape[1] == schema.num_candidates and name != "mask":
                    arrays[name] = np.where(drop, np.zeros((), a.dtype), a)
        write_partition(out_dir, target, part, arrays)
    write_schema(out_dir, target)
    return out_dir


# ------------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------------
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


def _row_metrics(m: dict[str, float], keep: int) -> dict[str, float]:
    """Result-file metrics: ``joint_recall`` (= Recall@keep) first, then the rest."""
    rest = {k: v for k, v in m.items() if k not in (f"recall@{keep}", "requests")}
    return {"joint_recall": m[f"recall@{keep}"], **rest, "requests": m["requests"]}


# ------------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------------
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


def _slug(key: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in key).strip("_")


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
) -> dict:
    """Train and evaluate the pre-ranking rows ``repeats`` times (seeds 0..R-1); write and return the results.

    Args:
        data: a pre-ranking dataset (:func:`prepare_prerank_movielens` or
            :func:`~cascade_ranking.datasets.ranktower_sampling.build_ranktower_samples`): one-stage ``keep``,
            funnel positions ``random``, ``candidate``, ``impression``.
        out_dir: output folder (see the module docstring).
        repeats: seeds per row.
        models: Table 1 rows to run (``lr``, ``two_tower`` (alias ``dssm``), ``cold``, ``din``, ``arf``,
            ``ranktower``); ``None`` = all.
        ablations: also run Tables 2-4 (:data:`ABLATIONS`, eight RankTower rows).
        on_run: called after each run with ``(row, seed, {"test": metrics, ...})``; ``metrics`` holds
            ``joint_recall`` (= Recall@keep), ``ndcg@K``, ``recall@K`` of the other cutoffs.
        base: configuration shared by every run (``method``, ``models``, ``keep``, ``loss``, ``seed`` and
            ``data`` are set per row); default :class:`~cascade_ranking.training.config.TrainConfig()`.
        ks: cutoffs (default ``(gt_num, keep)``).

    Returns:
        ``{"task", "dataset", "data", "stages", "keep", "gt_num", "num_candidates", "ks", "repeats", "runs",
        "summary", "tables", "metrics"}``.

    Raises:
        ValueError: ``repeats`` not positive, unknown rows, or a dataset that is not a one-stage pre-ranking
            dataset.
    """
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    rows = _select_rows(models, ablations)
    data, out_dir = Path(data), Path(out_dir)
    schema = open_dataset(data)
    if len(schema.keep) != 1 or "impression" not in schema.funnel_positions:
        raise ValueError(
            f"{data}: not a pre-ranking dataset (keep={schema.keep}, funnel positions {schema.funnel_positions}); "
            "build one with prepare_prerank_movielens or build_ranktower_samples"
        )
    keep = schema.keep[0]
    ks = sorted({int(k) for k in (ks or (schema.gt_num, keep))} | {keep})
    base = base or TrainConfig()
    test = schema.partitions_with_role("test")
    device = resolve_device(base.device)
    runs: list[dict] = []
    last_table1 = max((i for i, r in enumerate(rows) if r.table == "table1"), default=-1)
    for i, row in enumerate(rows):
        row_data = data if row.variant is None else derive_variant(data, out_dir / "data" / row.variant, row.variant)
        for seed in range(repeats):
            run_name = f"{_slug(row.key)}-seed{seed}"  # run folder and TensorBoard sub-directory
            config = base.model_copy(
                update={
                    "method": row.method,
                    "models": [row.model],
                    "keep": [keep],
                    "loss": dict(row.loss),
                    "seed": seed,
                    "data": row_data,
                    "tensorboard": None if base.tensorboard is None else Path(base.tensorboard) / run_name,
                }
            )
            TrainConfig.model_validate(config.model_dump())  # re-validates the method name
            run_dir = out_dir / "runs" / run_name
            metrics = _run_row(config, row_data, data, schema, test, run_dir, ks, device)
            runs.append({"row": row.key, "table": row.table, "seed": seed, **_row_metrics(metrics["test"], keep)})
            runs[-1]["train_seconds"] = metrics["train_seconds"]
            if on_run is not None:
                on_run(row.key, seed, {**metrics, "test": _row_metrics(metrics["test"], keep)})
        if i == last_table1:  # the reference rows close Table 1
            runs += _reference_runs(data, schema, test, ks, keep, repeats, device)
    summary = summarize(runs)
    tables: dict[str, list[str]] = {}
    for run in runs:
        if run["row"] not in tables.setdefault(run["table"], []):
            tables[run["table"]].append(run["row"])
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
        "metrics": {
            "rt": "RankTower model (+ its hybrid loss unless the row names one loss)",
            "joint_recall": f"Recall@{keep}: |top {keep} by score ∩ impressions| / |impressions| (gt_num = "
            f"{schema.gt_num} impressions per request)",
            "recall@K": "the same with the top K",
            "ndcg@K": "NDCG@K with the hard label as gain (scikit-learn's ndcg_score)",
        },
        "runs": runs,
        "summary": summary,
        "tables": tables,
    }
    write_results(out_dir, results)
    write_text_atomic(out_dir / "results.md", results_markdown(results))
    return results


def _first_stage(scorer: torch.nn.Module) -> Callable[[RequestBatch], torch.Tensor]:
    """``batch -> scorer(batch)[0]``: the first stage's ``[B, N]`` scores of a reference scorer."""
    return lambda batch: scorer(batch)[0]


def _reference_runs(data, schema, test, ks, keep, repeats, device) -> list[dict]:
    """The untrained reference rows of Table 1: random scores and training-week rating counts."""
    pop = PopularityScorer.fit(data, schema, 1).to(device)
    runs = []
    for seed in range(repeats):
        for name, scorer in (("random", RandomScorer(1, seed)), ("popularity", pop)):
            m = evaluate_prerank(_first_stage(scorer), data, schema, test, ks=ks, seed=seed, device=device)
            runs.append({"row": name, "table": "table1", "seed": seed, **_row_metrics(m, keep)})
    return runs


def results_markdown(results: dict) -> str:
    """The results as Markdown: a header with the metric definitions, then one table per benchmark table."""
    lines = [
        f"# {results['dataset']}: pre-ranking, keep {results['keep'][0]} of {results['num_candidates']} "
        f"candidates per request, {results['repeats']} seed(s)",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in results["metrics"].items()]
    for table, rows in results["tables"].items():
        lines += ["", f"## {TABLE_TITLES.get(table, table)}", ""]
        lines.append(markdown_table({r: results["summary"][r] for r in rows}).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _run_row(
    config: TrainConfig,
    row_data: Path,
    data: Path,
    schema: DatasetSchema,
    test: Sequence[Partition],
    run_dir: Path,
    ks: Sequence[int],
    device: torch.device,
) -> dict:
    """Train one row (reusing a finished run) and evaluate it on ``data``'s test partitions."""
    done = run_dir / PRERANK_METRICS_FILE
    if done.is_file() and (run_dir / METRICS_FILE).is_file():
        log.info("reusing finished run %s", run_dir)
        return json.loads(done.read_text())
    result = train(config, data=row_data, run_dir=run_dir)
    cascade = load_run(run_dir, data=data).cascade.to(device).eval()
    model = cascade.stages[0].model
    test_metrics = evaluate_prerank(
        model, data, schema, test, ks=ks, seed=config.seed, batch_size=config.eval_batch_size, device=device
    )
    metrics = {
        "row_config": {
            "method": config.method,
            "model": config.models[0] if config.models else None,
            "loss": config.loss,
        },
        "train_seconds": result.metrics["train_seconds"],
        "test": test_metrics,
    }
    write_text_atomic(done, json.dumps(metrics, indent=2) + "\n")
    return metrics

"""The pre-ranking datasets of the RankTower comparison (Yan & Li 2023, Sec. 4.1 and Tables 2-4): the
MovieLens-100K full-stage samples and their training-data variants for the ablations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.schema import TrainDefaults
from ..data.store import open_dataset, read_partition, write_partition, write_schema
from .ranktower_sampling import RankTowerSamples, RankTowerSamplingConfig, build_ranktower_samples

__all__ = [
    "PAPER_SAMPLING",
    "PRERANK_DATASET_NAME",
    "PRERANK_PAPER_DATASET_NAME",
    "PROTOCOLS",
    "VARIANTS",
    "derive_variant",
    "prepare_prerank_movielens",
]

#: Name of the MovieLens-100K pre-ranking dataset (versioned with the MovieLens dataset version).
PRERANK_DATASET_NAME = "movielens-100k-v1-prerank"
#: Name of its variant under RankTower's protocol (negative impressions, user filter, random split).
PRERANK_PAPER_DATASET_NAME = "movielens-100k-v1-prerank-paper"

#: RankTower's protocol on MovieLens-100K (Sec. 5.1.1): a rating is an impression, a rating >= 4 positive
#: feedback (so impressions hold negatives: 45% of ML-100K's ratings are below 4), hard label 1 + feedback; users
#: with >= 100 impressions and >= 20 positives (363 of 943 users, 74,387 ratings: the paper's thresholds need no
#: scaling here); each user's requests split 70/10/20 at random into train/valid/test.
PAPER_SAMPLING = RankTowerSamplingConfig(
    history_fields=("item_id", "genre"),
    positive_rating=4.0,
    min_impressions=100,
    min_positives=20,
    split="random",
)

#: ``protocol`` -> (dataset name, sampling configuration) of :func:`prepare_prerank_movielens`.
PROTOCOLS: dict[str, tuple[str, RankTowerSamplingConfig]] = {
    "paper": (PRERANK_PAPER_DATASET_NAME, PAPER_SAMPLING),
    "time": (PRERANK_DATASET_NAME, RankTowerSamplingConfig(history_fields=("item_id", "genre"))),
}

#: Training-data variants of the ablations: name -> (funnel positions masked in training weeks, drop soft labels).
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "no_random": (("random",), False),
    "no_candidate": (("candidate",), False),
    "no_candidate_random": (("candidate", "random"), False),
    "hard_teacher": ((), True),
}


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
    protocol: str = "time",
) -> RankTowerSamples:
    """Build the MovieLens-100K full-stage pre-ranking dataset in ``out_dir`` (about half a minute on 2 CPUs).

    ``protocol`` (:data:`PROTOCOLS`): ``"time"``, every rating a positive impression, weekly partitions;
    ``"paper"``, RankTower's protocol (:data:`PAPER_SAMPLING`). ``config`` overrides the protocol's sampling.

    Reads ``src`` (any layout :func:`~cascade_ranking.datasets.movielens.read_movielens` accepts) or the cached
    GroupLens download (fetched from ``url`` on first use), checks it is MovieLens-100K and builds the dataset
    with the history fields ``item_id`` and ``genre`` (as the cascade dataset) and training defaults batch
    256, 3 passes.

    Raises:
        DatasetUnavailableError: no ``src`` and the download failed.
        DataFormatError: ``src`` is malformed or not MovieLens-100K.
    """
    from .movielens import (
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
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known protocols: {sorted(PROTOCOLS)}")
    name, default = PROTOCOLS[protocol]
    return build_ranktower_samples(
        movielens_log(tables),
        out_dir,
        name=name,
        seed=seed,
        config=config or default,
        train_defaults=TrainDefaults(batch_size=64, passes=5)
        if protocol == "paper"
        else TrainDefaults(batch_size=256, passes=3),
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

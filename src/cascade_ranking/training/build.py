"""A run configuration resolved against its dataset, and the cascade it describes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cascade import Cascade, Stage
from ..data.schema import DatasetSchema
from ..models import build_model
from ..types import check_keep, stage_names
from .config import DEFAULT_MODELS, TrainConfig

__all__ = ["Resolved", "build_cascade", "resolve_config", "with_prerank_model"]


def resolve_config(config: TrainConfig, schema: DatasetSchema, data: Path) -> TrainConfig:
    """Fill every ``None`` of ``config`` from the dataset; validate keep sizes and stage models against it.

    Raises:
        ValueError: keep sizes that do not fit the dataset (:func:`~cascade_ranking.types.check_keep`), or a
            number of stage models other than the number of keep sizes.
    """
    keep = list(config.keep) if config.keep is not None else list(schema.keep)
    gt_num = config.gt_num if config.gt_num is not None else schema.gt_num
    check_keep(
        keep,
        gt_num=gt_num,
        num_candidates=schema.num_candidates,
        what=f"keep (dataset {data} has N={schema.num_candidates})",
    )
    models = list(config.models) if config.models is not None else DEFAULT_MODELS.get(len(keep))
    if models is None or len(models) != len(keep):
        raise ValueError(f"models={models}: give one stage model per keep size (keep={keep})")
    return config.model_copy(
        update=dict(
            data=Path(data).resolve(),  # absolute: `evaluate` and `--resume` work from any directory
            stages=len(keep) if len(keep) in (2, 3) else config.stages,
            keep=keep,
            gt_num=gt_num,
            models=models,
            batch_size=config.batch_size or schema.train_defaults.batch_size,
            passes=config.passes or schema.train_defaults.passes,
        )
    )


@dataclass(frozen=True)
class Resolved:
    """The fields of a :class:`TrainConfig` that :func:`resolve_config` fills from the dataset, typed as set."""

    keep: list[int]
    gt_num: int
    models: list[str]
    batch_size: int
    passes: int

    @classmethod
    def of(cls, config: TrainConfig) -> Resolved:
        """Raises ``ValueError`` when ``config`` was not resolved (a field is still ``None``)."""
        keep, gt_num, models, batch, passes = (
            config.keep,
            config.gt_num,
            config.models,
            config.batch_size,
            config.passes,
        )
        if keep is None or gt_num is None or models is None or batch is None or passes is None:
            raise ValueError(
                "configuration not resolved against a dataset (keep, gt_num, models, batch_size or passes unset); "
                "call resolve_config first"
            )
        return cls(keep=list(keep), gt_num=gt_num, models=list(models), batch_size=batch, passes=passes)


def with_prerank_model(config: TrainConfig, schema: DatasetSchema, model: str) -> TrainConfig:
    """``config`` with the pre-ranking (second) stage's model replaced, e.g. RankTower in DIN's slot.

    Raises:
        ValueError: the cascade has fewer than two stages.
    """
    keep = config.keep or schema.keep
    models = list(config.models or DEFAULT_MODELS.get(len(keep), []))
    if len(models) < 2:
        raise ValueError(f"--prerank-model needs a cascade of at least two stages (keep={list(keep)})")
    models[1] = model
    return config.model_copy(update={"models": models})


def build_cascade(config: TrainConfig, schema: DatasetSchema) -> Cascade:
    """The cascade of ``config.models`` with ``config.keep`` (a resolved config), built from the dataset's
    feature spec.

    Raises:
        ValueError: bad model sizes, a ``config.model_options`` entry for a model the cascade does not have,
            or an option its model does not take.
    """
    run = Resolved.of(config)
    names = stage_names(len(run.keep))
    stray = sorted(set(config.model_options) - set(run.models))
    if stray:
        raise ValueError(f"model_options names {stray}, not stage models of this run (models {run.models})")
    return Cascade([Stage(name, _stage_model(config, schema, model), keep)
                    for name, model, keep in zip(names, run.models, run.keep)])  # fmt: skip


def _stage_model(config: TrainConfig, schema: DatasetSchema, model: str):
    """``build_model`` with the config's sizes and the model's entry of ``model_options``."""
    options = config.model_options.get(model, {})
    try:
        return build_model(model, schema, emb_dim=config.emb_dim, hidden=config.hidden, **options)
    except TypeError as exc:
        raise ValueError(f"model_options[{model!r}] = {options}: the model does not take them ({exc})") from exc

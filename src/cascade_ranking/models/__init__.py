"""Stage models: every model maps a :class:`~cascade_ranking.types.RequestBatch` to ``[B, N]`` logits.

Registry (explicit; add a model by adding a line to ``_REGISTRY``), with each model's role in the LCRON
experiments (Wang et al., ICML 2025):

* ``"dssm"``: :class:`DSSM`, two-tower (user tower . item tower) — retrieval;
* ``"mlp"``: :class:`MLP`, per-candidate MLP over the pooled history — pre-ranking of three stages;
* ``"ranktower"``: :class:`~.ranktower.RankTower`, gated multi-head towers + cross-attention + max-similarity
  (Yan & Li 2023) — pre-ranking, with the hybrid losses of :mod:`cascade_ranking.losses.ranktower`;
* ``"din"``: :class:`DIN`, target attention over the history + MLP — pre-ranking (two stages) or ranking;
* ``"dat"``: :class:`~.dat.DAT`, dual augmented two-tower (Yu et al. 2021) — pre-ranking baseline of RankTower;
* ``"inttower"``: :class:`~.inttower.IntTower` (Li et al., CIKM 2022) — pre-ranking baseline of RankTower.

DAT and IntTower train with auxiliary losses of their own, computed in their training forward pass and added
to the ranking loss by the training loop (:mod:`cascade_ranking.models.auxiliary`).

Every model scores all N candidate slots of every request in one pass (padded slots get a score too;
losses, :meth:`~cascade_ranking.cascade.Cascade.select` and the metrics mask them). The device and dtype
follow the model's parameters (``model.to(device)``, ``model.double()``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..data.schema import DatasetSchema
from ..types import StageModel
from .cold import COLD
from .dat import DAT
from .din import DIN
from .dssm import DSSM
from .embedding import FeatureEncoder, feed_forward
from .inttower import IntTower
from .lr import LR
from .mlp import MLP
from .ranktower import RankTower

__all__ = [
    "DAT",
    "DIN",
    "DSSM",
    "IntTower",
    "MLP",
    "FeatureEncoder",
    "StageModel",
    "available_models",
    "build_model",
    "feed_forward",
]


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "dssm": DSSM,
    "din": DIN,
    "mlp": MLP,
    "ranktower": RankTower,
    "lr": LR,
    "cold": COLD,
    "dat": DAT,
    "inttower": IntTower,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, schema: DatasetSchema, *, emb_dim: int | str = 8, hidden: int = 128, **options) -> nn.Module:
    """Build the stage model ``name`` for ``schema``.

    Args:
        name: one of :func:`available_models` (case-insensitive).
        schema: dataset schema (fields, roles, vocabulary sizes, history fields).
        emb_dim: embedding dimension (8 in the LCRON experiments).
        hidden: first hidden width (128 in the LCRON experiments).
        **options: model-specific keyword arguments (e.g. DIN's ``attention_hidden``).

    Returns:
        an ``nn.Module`` whose ``forward(batch)`` returns ``[B, N]`` logits.

    Raises:
        ValueError: unknown ``name`` (the message lists the available models) or bad sizes.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {available_models()}")
    return _REGISTRY[key](schema, emb_dim=emb_dim, hidden=hidden, **options)

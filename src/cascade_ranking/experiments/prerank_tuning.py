"""The pre-ranking benchmark's equal tuning budget: a small grid per Table 1 row, searched on validation.

Yan & Li (2023), *RankTower*, arXiv 2407.12385, Sec. 5.1.4: every compared model is tuned by grid search on
the validation set (DNN layers 1-4 and units 64-512; RankTower's H_u, H_i in 2-10, units 32-256 and
AM-Rankmax's alpha in [2, 5]) and trained with early stopping. The paper does not give its grid's points or
size. Ours is scaled to what 2 CPU cores run in an hour and gives **every row the same budget**:
:data:`GRID_BUDGET` = 4 grid points, each trained once (seed 0) with early stopping
(:class:`~cascade_ranking.training.config.EarlyStopping`) and scored by Recall@keep on the validation
partitions (not Recall@100: most users' validation lists are too short for it; see
:func:`~.prerank._with_early_stopping`); the best point is then run with every seed (its seed-0 run reused). The
points
(:data:`TUNING_GRID`):

* the DNN rows (two-tower, DAT, COLD, IntTower, DIN, ARF's two-tower): hidden units 64, 128, 256, 512 (the
  paper's unit range; the depth stays each model's published depth: searching it too would need a grid of at
  least 8 points per row);
* LR (no hidden layer): the Adam learning rate 3e-4, 1e-3, 3e-3, 1e-2 (the paper trains LR with FTRL at 0.01;
  we keep Adam, the optimizer of every other row, and search its rate instead);
* RankTower: hidden units 128, 256 x alpha 2, 5 (the upper half of the paper's unit range 32-256, and the ends of
  its alpha range; the heads H_u = H_i stay 4, inside its 2-10: a first grid over heads {2, 4} x alpha {2, 5} at
  128 units found 2 and 4 heads within 0.007 validation Recall@20 of each other, while the DNN rows gained up to
  0.07 from width).

The Tables 2-4 ablation rows are RankTower variants and take RankTower's chosen point (alpha only where the
row's loss has it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import losses
from .runner import BenchmarkRow

__all__ = ["GRID_BUDGET", "TUNING_GRID", "GridPoint", "choose_points", "tuned_rows", "tuning_key", "tuning_rows"]


@dataclass(frozen=True)
class GridPoint:
    """One point of a row's grid.

    Attributes:
        label: how the point is named in the results (``"hidden 256"``).
        updates: :class:`~cascade_ranking.training.config.TrainConfig` fields it sets (``hidden``, ``lr``,
            ``model_options``; ``loss`` entries are merged into the row's own).
    """

    label: str
    updates: Mapping


#: Grid points per row: the same for every row (the equal budget).
GRID_BUDGET = 4

_WIDTHS = tuple(GridPoint(f"hidden {h}", {"hidden": h}) for h in (64, 128, 256, 512))
TUNING_GRID: dict[str, tuple[GridPoint, ...]] = {
    "lr": tuple(GridPoint(f"lr {lr:g}", {"lr": lr}) for lr in (3e-4, 1e-3, 3e-3, 1e-2)),
    **{row: _WIDTHS for row in ("two_tower", "dat", "cold", "inttower", "din", "arf")},
    "ranktower": tuple(
        GridPoint(f"hidden {h}, alpha {a:g}", {"hidden": h, "loss": {"alpha": a}})
        for h in (128, 256)
        for a in (2.0, 5.0)
    ),
}
assert all(len(points) == GRID_BUDGET for points in TUNING_GRID.values())


def with_point(updates: Mapping, point: GridPoint) -> dict:
    """A row's configuration updates with a grid point applied: ``loss`` entries merged into the row's, and a
    loss hyper-parameter the row's method does not have left out (e.g. alpha for the Softmax ablation)."""
    out = {**updates, **{k: v for k, v in point.updates.items() if k != "loss"}}
    known = losses.hyperparameters(updates["method"])
    extra = {k: v for k, v in dict(point.updates.get("loss", {})).items() if k in known}
    out["loss"] = {**dict(updates.get("loss", {})), **extra}
    return out


def tuning_key(row: str, point: GridPoint) -> str:
    """The name of row ``row``'s run at ``point`` (its run folders: ``runs/<slug>-seed<s>``)."""
    return f"tune {row}: {point.label}"


def tuning_rows(rows: Sequence[BenchmarkRow], grid: Mapping[str, Sequence[GridPoint]]) -> list[BenchmarkRow]:
    """One benchmark row per (row, grid point) of the rows that have a grid (table ``"tuning"``).

    Raises:
        ValueError: grids of different sizes (the budget would not be equal).
    """
    sizes = {len(grid[r.key]) for r in rows if r.key in grid}
    if len(sizes) > 1:
        raise ValueError(f"tuning grids must have the same number of points for every row, got sizes {sorted(sizes)}")
    return [
        BenchmarkRow(tuning_key(r.key, p), with_point(r.updates, p), r.data, "tuning")
        for r in rows
        if r.key in grid
        for p in grid[r.key]
    ]


def choose_points(
    rows: Sequence[BenchmarkRow], grid: Mapping[str, Sequence[GridPoint]], valid: Mapping[str, float]
) -> dict[str, GridPoint]:
    """Each row's grid point with the highest validation value (``valid``: tuning key -> value; the first point
    wins a tie). Rows without a grid are left out."""
    best: dict[str, GridPoint] = {}
    for r in rows:
        if r.key in grid:
            best[r.key] = max(grid[r.key], key=lambda p: valid[tuning_key(r.key, p)])
    return best


def tuned_rows(
    rows: Sequence[BenchmarkRow], best: Mapping[str, GridPoint], shared: str, point_of: Mapping[str, str] | None = None
) -> list[BenchmarkRow]:
    """The rows with their chosen points: a Table 1 row reuses its point's run folders (seed 0 already ran in
    the tuning); an ablation row (no grid of its own) takes the point of row ``point_of[key]``, by default of
    row ``shared`` (RankTower's)."""
    out = []
    for r in rows:
        source = (point_of or {}).get(r.key, shared)
        if r.key in best:
            p = best[r.key]
            out.append(BenchmarkRow(r.key, with_point(r.updates, p), r.data, r.table, folder=tuning_key(r.key, p)))
        elif source in best:
            out.append(BenchmarkRow(r.key, with_point(r.updates, best[source]), r.data, r.table))
        else:
            out.append(r)
    return out

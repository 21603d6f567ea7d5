"""Equal-frequency bucketisation of continuous features (RankTower, Yan & Li 2023, Sec. 3.2).

"We first bucketize all the continuous features to equal frequency bins, then embed the bucketized continuous
features": every continuous column becomes an id column whose bins hold (about) the same number of rows.
Edges are fitted once (on the training rows, so that no later value moves them) and applied to every row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_bins", "equal_frequency_bins", "fit_equal_frequency_edges"]


def fit_equal_frequency_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges of ``n_bins`` equal-frequency bins of the finite ``values``: a sorted float64 array.

    Edges are the ``1/n_bins, ..., (n_bins - 1)/n_bins`` quantiles with duplicates removed, so a column with few
    distinct values gets fewer bins (never an empty bin between two equal edges).

    Args:
        values: ``[M]`` numbers; NaN and inf are ignored.
        n_bins: number of bins wanted, ``>= 1``.

    Raises:
        ValueError: ``n_bins < 1``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0 or n_bins == 1:
        return np.zeros(0)
    edges = np.quantile(x, np.arange(1, n_bins) / n_bins, method="linear")
    return np.unique(edges)


def apply_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket ids ``[M]`` int64: ``1 + (number of edges <= value)``; NaN gets 0 (the embedding padding id).

    With ``e`` inner edges the ids are ``1 .. e + 1``: vocabulary size ``e + 2``.
    """
    x = np.asarray(values, dtype=np.float64)
    ids = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right").astype(np.int64) + 1
    return np.where(np.isnan(x), 0, ids)


def equal_frequency_bins(values: np.ndarray, n_bins: int, *, fit_on: np.ndarray | None = None):
    """Fit the edges on ``fit_on`` (default: ``values``) and bucket ``values``: ``(ids [M] int64, edges)``.

    See :func:`fit_equal_frequency_edges` and :func:`apply_bins`.
    """
    edges = fit_equal_frequency_edges(values if fit_on is None else fit_on, n_bins)
    return apply_bins(values, edges), edges

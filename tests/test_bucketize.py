"""Equal-frequency bucketisation (RankTower Sec. 3.2) against pandas.qcut, ties, NaN, fitted edges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade_ranking.datasets.bucketize import apply_bins, equal_frequency_bins, fit_equal_frequency_edges


def test_bins_match_pandas_qcut_on_distinct_values():
    x = np.random.default_rng(0).lognormal(size=1000)
    ids, edges = equal_frequency_bins(x, 10)
    want = pd.qcut(x, 10, labels=False) + 1
    # qcut's bins are right-closed, ours left-closed: they differ only at values equal to an edge
    on_edge = np.isin(x, edges)
    assert (ids[~on_edge] == want[~on_edge]).all()
    assert np.bincount(ids)[1:].tolist() == [100] * 10


def test_ties_give_fewer_bins_never_empty_ones_and_nan_is_the_padding_id():
    x = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, np.nan])
    ids, edges = equal_frequency_bins(x, 4)
    assert len(np.unique(edges)) == len(edges) and ids[-1] == 0
    assert set(ids[:-1].tolist()) == set(range(1, len(edges) + 2)) - ({1} if (x[:-1] >= edges[0]).all() else set())
    assert (ids[:6] == ids[0]).all()
    assert fit_equal_frequency_edges(x, 1).size == 0


def test_edges_fitted_on_training_rows_apply_to_new_values():
    edges = fit_equal_frequency_edges(np.arange(100.0), 4)
    assert apply_bins(np.array([-5.0, 24.0, 25.0, 1e9]), edges).tolist() == [1, 1, 2, 4]
    with pytest.raises(ValueError, match="n_bins"):
        fit_equal_frequency_edges(np.arange(3.0), 0)

"""Datasets: the request-list schema and store, the streaming loader, and the converters.

Import from the submodules (nothing is re-exported here, so that ``import cascade_ranking.data.schema`` stays
light):

* :mod:`~cascade_ranking.data.schema`: :class:`DatasetSchema` (feature spec) and :class:`RequestBatch`;
* :mod:`~cascade_ranking.data.store`: the on-disk store (``schema.json`` + one Parquet file per partition);
* :mod:`~cascade_ranking.data.loader`: streaming batches from the store;
* converters: :mod:`~cascade_ranking.datasets.movielens`, :mod:`~cascade_ranking.datasets.recflow`,
  :mod:`~cascade_ranking.datasets.full_stage`, :mod:`~cascade_ranking.datasets.ranktower_sampling`,
  :mod:`~cascade_ranking.datasets.synthetic`; :mod:`~cascade_ranking.data.cache` (the user cache folder).
"""

__all__: list[str] = []

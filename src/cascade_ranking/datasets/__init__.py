"""Dataset builders: they turn raw logs into the request-list store (:mod:`cascade_ranking.data`) and may fit
models to do so (hard negatives, soft labels).

Import from the submodules (nothing is re-exported, so importing one builder stays light):

* :mod:`~cascade_ranking.datasets.movielens`: MovieLens-100K as a full-stage cascade (the default dataset);
* :mod:`~cascade_ranking.datasets.recflow`: RecFlow's published files;
* :mod:`~cascade_ranking.datasets.table`: your own logs, a long table (one row per request x candidate) mapped
  by :mod:`~cascade_ranking.datasets.table_mapping` (``prepare table``);
* :mod:`~cascade_ranking.datasets.synthetic`: the funnel simulator (RecFlow layout);
* :mod:`~cascade_ranking.datasets.full_stage`: full-stage sampling over any interaction log;
* :mod:`~cascade_ranking.datasets.ranktower_sampling`: RankTower's pre-ranking samples and soft labels.
"""

__all__: list[str] = []

"""Experiments: one runner for every benchmark (the LCRON paper's cascade comparison and the RankTower paper's
pre-ranking comparison), their result files and charts, and the HTML report.

* :mod:`~cascade_ranking.experiments.runner`: run-or-reuse every (row, seed), reference rows, results;
* :mod:`~cascade_ranking.experiments.cascade`: the cascade benchmark's rows and evaluation;
* :mod:`~cascade_ranking.experiments.prerank`: the pre-ranking benchmark's rows and evaluation;
* :mod:`~cascade_ranking.experiments.results`: summaries, tables, result files, charts;
* :mod:`~cascade_ranking.experiments.report`: the self-contained HTML / PNG report;
* :mod:`~cascade_ranking.experiments.config`: :class:`~cascade_ranking.experiments.config.BenchmarkConfig`.
"""

__all__: list[str] = []

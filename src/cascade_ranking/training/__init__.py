"""The training protocol and everything a run folder holds.

* :mod:`~cascade_ranking.training.loop`: :func:`~cascade_ranking.training.loop.train`, the streaming protocol
  as named steps;
* :mod:`~cascade_ranking.training.config`: :class:`~cascade_ranking.training.config.TrainConfig` and config
  files / ``--set`` parsing;
* :mod:`~cascade_ranking.training.build`: a config resolved against its dataset, and its cascade;
* :mod:`~cascade_ranking.training.checkpoint`: checkpoints and :func:`~cascade_ranking.training.checkpoint.load_run`;
* :mod:`~cascade_ranking.training.evaluate`: evaluation and the reference scorers;
* :mod:`~cascade_ranking.training.distributed`: devices and ``torchrun``;
* :mod:`~cascade_ranking.training.tracking`: TensorBoard;
* :mod:`~cascade_ranking.training.runfiles`: run-folder file names (no torch import).
"""

__all__: list[str] = []

"""``python -m cascade_ranking`` (e.g. under ``torchrun``) is the ``cascade-ranking`` command."""

from .cli import main

main()

"""Where downloaded source data lives: the per-user cache directory.

Datasets whose licence forbids redistribution (MovieLens) are never shipped; they are downloaded on first
use into the user's cache and read from there afterwards. The cache root is, in order of precedence:

1. ``$CASCADE_RANKING_CACHE`` (when set and non-empty);
2. ``$XDG_CACHE_HOME/cascade-ranking`` (when ``XDG_CACHE_HOME`` is set and non-empty);
3. ``~/.cache/cascade-ranking``.

Nothing is created until a download actually happens.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "cache_dir", "source_cache_dir"]

#: Environment variable that overrides the cache root.
CACHE_ENV_VAR = "CASCADE_RANKING_CACHE"
_APP_DIR = "cascade-ranking"


def cache_dir() -> Path:
    """Return the cache root (see the module docstring for the precedence); the directory may not exist."""
    explicit = os.environ.get(CACHE_ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / _APP_DIR
    return Path.home() / ".cache" / _APP_DIR


_default_root = cache_dir  # the parameter of source_cache_dir shadows the function's name


def source_cache_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the folder caching the source files of dataset ``name`` (e.g. ``"movielens-100k"``).

    Args:
        name: a plain folder name (no path separators).
        cache_dir: an explicit cache root that replaces :func:`cache_dir` (tests, custom setups).

    Raises:
        ValueError: ``name`` is empty or contains a path separator.
    """
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ValueError(f"name={name!r}: expected a plain folder name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_root()
    return root / name

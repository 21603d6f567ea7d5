"""Atomic writes: a file or a whole folder appears complete or not at all (temp name beside it + rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_replaceable", "staged_directory", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_replaceable(out: str | Path, marker: str, *, what: str = "out") -> None:
    """Raise ``ValueError`` (naming the option ``what``) unless ``out`` is missing, an empty folder, or a previous
    output holding ``marker``.

    Builders call it before long work, so that a typo is refused at once rather than after the work.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise ValueError(
            f"{what}={str(out)!r} exists and is not a previous output (no {marker}); refusing to replace it"
        )


@contextmanager
def staged_directory(out: str | Path, *, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it is deleted.

    Args:
        out: the folder to (re)place.
        marker: when given, ``out`` may only be missing, empty, or a previous output holding ``marker`` (e.g.
            ``schema.json``); any other folder is refused, so that a typo never deletes unrelated files.

    Raises:
        ValueError: ``out`` exists and is not a previous output (only with ``marker``); nothing is touched.
    """
    out = Path(out)
    if marker is not None:
        check_replaceable(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

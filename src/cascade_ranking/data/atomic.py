"""Atomic writes: a file or a whole folder appears complete or not at all (temp name beside it + rename).

Temporary names are ``.<name>.<pid>.<random>.tmp`` (``<name>`` cut to :data:`TEMP_NAME_CHARS` characters, so a
legal 255-byte output name stays legal as a temporary). One left behind by a killed process (its ``<pid>`` no
longer running) is deleted by the next write of the same output (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_NAME_CHARS",
    "atomic_path",
    "check_replaceable",
    "pid_alive",
    "remove_stale_temporaries",
    "staged_directory",
    "strict_json",
    "temp_prefix",
    "write_json_atomic",
    "write_text_atomic",
]

log = logging.getLogger(__name__)

#: How many characters of the output's name a temporary name keeps (``.`` + 100 + ``.`` + pid + ``.`` + 8 random
#: + ``.tmp`` stays far below the usual 255-byte limit of a file name).
TEMP_NAME_CHARS = 100
_TEMP = re.compile(r"^\.(?P<name>.*)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.(?:tmp|old)$")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary names for an output called ``name``."""
    return f".{name[:TEMP_NAME_CHARS]}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (``True`` when it exists but belongs to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, name: str | None = None) -> list[str]:
    """Delete the temporaries in ``folder`` (of the output ``name`` only, when given) whose writer is no longer
    running (killed mid-write); return their names. Temporaries of running processes are left alone."""
    folder = Path(folder)
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name[:TEMP_NAME_CHARS]) or pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        log.warning("%s: removed %d leftover temporary file(s) of killed processes: %s", folder, len(removed), removed)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
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
    remove_stale_temporaries(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finite_or_null(value: Any, where: str, nulled: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        nulled.append(where)
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), nulled) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", nulled) for i, v in enumerate(value)]
    return value


def strict_json(value: Any, *, what: str = "JSON") -> str:
    """``value`` as strict JSON text (RFC 8259: no ``NaN``/``Infinity``, which most readers reject), indented.

    A non-finite float becomes ``null``, meaning *undefined* (e.g. a metric averaged over no request); a warning
    names ``what`` and the keys. Raises ``TypeError`` for a value JSON cannot hold.
    """
    nulled: list[str] = []
    clean = _finite_or_null(value, "", nulled)
    if nulled:
        log.warning("%s: non-finite values written as null (undefined): %s", what, ", ".join(nulled[:10]))
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write ``value`` as strict JSON (:func:`strict_json`) to ``path`` atomically."""
    write_text_atomic(path, strict_json(value, what=str(path)))

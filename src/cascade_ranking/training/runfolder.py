"""Run-folder ownership: one process writes a run folder at a time, and a new run never mixes with an old one.

:func:`claim_run_folder` is the one protocol every writer of a run folder follows (``train``, ``--resume``, the
benchmarks' runs):

* **a lock** ``<run>/.run.lock``, held with ``flock`` for the whole run and holding the owner's pid (deleted
  when the run ends). A second process gets :class:`RunFolderError` naming the folder and the owner. The kernel
  drops the lock when its owner dies (even by ``kill -9``), so a lock file left by a dead process is taken over
  at once, with a warning naming the dead pid; a pid reused by an unrelated process cannot keep a folder locked.
  A run that fails before writing anything leaves no folder it created.
* **an explicit choice** for a folder that holds a run: a new (not resumed) run there needs ``overwrite``;
  otherwise :class:`RunFolderError` names the folder and the option. With ``overwrite`` the previous run's files
  are deleted before anything new is written, ``metrics.json`` first (:data:`RUN_FILES` order), so the folder
  is at every instant either one run's files or an unfinished run's, never two runs' mixed.
* **no leftovers**: temporary files of writers that were killed (``.<name>.<pid>.*.tmp``) are deleted on claim.

Every file of the folder is written atomically (temporary name + rename, :mod:`cascade_ranking.data.atomic`), so a
crash leaves whole files; ``metrics.json`` is written last and marks a finished run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..data.atomic import pid_alive, remove_stale_temporaries
from .runfiles import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE

__all__ = ["LOCK_FILE", "RUN_FILES", "RunFolderError", "claim_run_folder"]

log = logging.getLogger(__name__)

#: The lock file of a run folder (holds the owner's pid while a process writes the folder).
LOCK_FILE = ".run.lock"
#: A run's files in the order ``overwrite`` deletes them: the finished-run marker first.
RUN_FILES = (METRICS_FILE, CHECKPOINT_FILE, CONFIG_FILE)


class RunFolderError(ValueError):
    """A run folder is in use by another process, or holds a run that a new run would replace."""


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _lock(run_dir: Path) -> int:
    """Take the folder's lock (non-blocking); return its descriptor. Raises :class:`RunFolderError` when held."""
    import fcntl

    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"process {owner}" if owner else "another process"
            raise RunFolderError(
                f"run folder {run_dir} is in use by {who} (lock {path}); wait for it to finish or choose another --out"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the lock file is still the one at the path (not unlinked by an owner that just finished)
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _read_pid(fd)
    if previous is not None and previous != os.getpid():
        state = "no longer running" if not pid_alive(previous) else "not holding it"
        log.warning("%s: taking over the lock left by process %d (%s)", run_dir, previous, state)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock(run_dir: Path, fd: int) -> None:
    """Release: the lock file is deleted while still held (a finished run leaves only its own files); a killed
    owner's lock file stays, naming its pid for the warning of the next owner."""
    import fcntl

    try:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _prepare(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Check (and with ``overwrite`` clear) what the folder holds before a run writes into it."""
    remove_stale_temporaries(run_dir)
    if resume:
        return
    held = sorted(e.name for e in os.scandir(run_dir) if e.name != LOCK_FILE)
    if not held:
        return
    if not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RunFolderError(
            f"run folder {run_dir} is not empty ({shown}); pass --overwrite to replace the run there, "
            "--resume to continue it, or choose another --out"
        )
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    log.info("%s: previous run's files removed (overwrite)", run_dir)


@contextmanager
def claim_run_folder(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Own ``run_dir`` (created when missing) for the duration of the block; see the module docstring.

    Args:
        overwrite: a new run may replace the run the folder holds (its files are deleted, ``metrics.json`` first;
            other files there are left alone).
        resume: the run continues the folder's own run (its files stay).

    Raises:
        RunFolderError: the folder is locked by a running process, or (neither ``overwrite`` nor ``resume``) it is
            not empty. Nothing in the folder is touched.
        OSError: the folder cannot be created or locked.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} exists and is not a folder")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock(run_dir)
    try:
        _prepare(run_dir, overwrite=overwrite, resume=resume)
        yield run_dir
    finally:
        _unlock(run_dir, fd)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder behind

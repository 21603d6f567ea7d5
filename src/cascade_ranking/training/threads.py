"""Torch CPU thread policy that holds up on a shared machine (no torch import at module level).

PyTorch's CPU kernels run on an OpenMP thread pool (GNU libgomp on Linux builds). By default its idle workers
*spin* while they wait for the next parallel region (``OMP_WAIT_POLICY=ACTIVE`` behaviour): on a machine where
another process is busy on one of the cores, a worker that waits for a core it does not get stalls every
parallel region, and a training step becomes 3-8x slower (``benchmarks/perf_threads.py``). Two measures:

* :func:`passive_openmp_wait` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle workers sleep) unless the user set it.
  libgomp reads its environment once, when torch is first imported, so this must run before ``import torch``:
  the ``cascade-ranking`` command calls it first thing. A library user who wants it sets the variable before
  importing torch.
* :func:`resolve_threads` applies ``TrainConfig.threads``: ``None`` (default) = torch's count capped at
  :func:`usable_cpus`, the CPUs this process may run on (``os.sched_getaffinity``; torch's own default counts
  the machine's cores, which oversubscribes a process limited by ``taskset`` or a container's CPU set); an
  integer is used as given;
  ``"auto"`` measures: :func:`choose_threads` times a probe (the first batch's forward and backward) at one
  thread, half and all usable CPUs, interleaved, and keeps the fastest.

The figures behind the default are in the README's performance section and ``docs/results/perf/threads.md``.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Literal

__all__ = [
    "WAIT_POLICY_ENV",
    "ThreadSetting",
    "auto_candidates",
    "choose_threads",
    "passive_openmp_wait",
    "resolve_threads",
    "usable_cpus",
]

log = logging.getLogger(__name__)

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"

#: ``TrainConfig.threads``: ``None`` = the CPUs this process may use, ``"auto"`` = measured, or a count.
ThreadSetting = int | Literal["auto"] | None


def passive_openmp_wait(environ: dict[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) before torch is imported.

    Returns:
        ``True`` if it was set; ``False`` if the user already chose a policy (theirs is kept) or torch is
        already imported in this process (too late: the OpenMP runtime read its environment at load time).
    """
    env = os.environ if environ is None else environ
    if WAIT_POLICY_ENV in env:
        return False
    if environ is None and "torch" in sys.modules:
        log.debug("torch already imported: %s left unset", WAIT_POLICY_ENV)
        return False
    env[WAIT_POLICY_ENV] = "PASSIVE"
    return True


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where the OS has no masks)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def auto_candidates(cpus: int | None = None) -> list[int]:
    """Thread counts ``"auto"`` tries: 1, half and all of ``cpus`` (default :func:`usable_cpus`), distinct."""
    n = usable_cpus() if cpus is None else cpus
    return sorted({1, max(1, n // 2), n})


def choose_threads(
    probe: Callable[[], object], candidates: Sequence[int], *, repeats: int = 2
) -> tuple[int, dict[int, float]]:
    """Time ``probe`` at each thread count and set torch to the fastest.

    Each candidate runs once untimed (warm-up), then ``repeats`` timed rounds go through the candidates in
    turn (interleaved, so a competing process's load drifts over all of them alike). Ties go to fewer threads.

    Args:
        probe: one unit of the real work (e.g. a forward and backward pass on a batch); called
            ``len(candidates) * (repeats + 1)`` times. It must leave no state behind that matters.
        candidates: positive thread counts.
        repeats: timed rounds (>= 1).

    Returns:
        The chosen count (now set with ``torch.set_num_threads``) and the median seconds of each candidate.

    Raises:
        ValueError: no candidates, a count < 1, or ``repeats < 1``; torch's thread count is restored if the
            probe raises.
    """
    import torch

    counts = list(dict.fromkeys(int(c) for c in candidates))
    if not counts or min(counts) < 1 or repeats < 1:
        raise ValueError(f"choose_threads: need positive candidates and repeats >= 1, got {candidates!r}, {repeats}")
    previous = torch.get_num_threads()
    times: dict[int, list[float]] = {c: [] for c in counts}
    try:
        for c in counts:
            torch.set_num_threads(c)
            probe()
        for _ in range(repeats):
            for c in counts:
                torch.set_num_threads(c)
                t = time.perf_counter()
                probe()
                times[c].append(time.perf_counter() - t)
    except BaseException:
        torch.set_num_threads(previous)
        raise
    medians = {c: statistics.median(v) for c, v in times.items()}
    best = min(counts, key=lambda c: (medians[c], c))
    torch.set_num_threads(best)
    log.info("threads auto: %s -> %d", ", ".join(f"{c}: {s * 1e3:.0f} ms" for c, s in medians.items()), best)
    return best, medians


def resolve_threads(setting: ThreadSetting) -> int | None:
    """Apply ``setting`` with ``torch.set_num_threads`` and return the count, or ``None`` for ``"auto"``
    (the caller measures with :func:`choose_threads` once it has a batch).

    Raises:
        ValueError: an integer < 1 or a string other than ``"auto"``.
    """
    import torch

    if setting == "auto":
        return None
    if setting is None:
        count = min(torch.get_num_threads(), usable_cpus())
    elif isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads={setting!r}: expected a positive integer, 'auto' or None")
    else:
        count = setting
    torch.set_num_threads(count)
    _note_spinning(count)
    return count


_noted: list[bool] = []


def _note_spinning(count: int) -> None:
    """Say once per process when idle OpenMP workers spin (no passive wait policy when torch was loaded)."""
    if count > 1 and not _noted and os.environ.get(WAIT_POLICY_ENV, "").upper() != "PASSIVE":
        _noted.append(True)
        log.info(
            "%d torch threads with spinning OpenMP workers: on a busy machine set %s=PASSIVE before importing "
            "torch (the cascade-ranking command does) or use threads='auto'",
            count, WAIT_POLICY_ENV,
        )  # fmt: skip

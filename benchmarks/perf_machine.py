"""The machine a benchmark ran on: CPU model, cores, memory, load, versions, and its matmul FLOP/s."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(name.lower()):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def machine_info() -> dict:
    """CPU model, logical cores (and those this process may use), memory, torch threads and versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    import numpy
    import pyarrow

    return {
        "cpu": _cpuinfo_field("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _mem_total_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``uptime``), or ``None`` where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def matmul_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict:
    """Median FLOP/s of ``torch.mm`` of two ``size x size`` matrices (``2 size^3`` FLOPs each)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "median_seconds": med,
        "gflops": 2 * size**3 / med / 1e9,
        "best_gflops": 2 * size**3 / min(times) / 1e9,
    }

"""CI gate: ``src/cascade_ranking`` type-checks with mypy (configured in ``pyproject.toml`` ``[tool.mypy]``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e '.[test]')")
def test_src_type_checks_with_mypy():
    """``python -m mypy src/cascade_ranking`` exits 0; on failure the assertion shows mypy's report."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "src/cascade_ranking", "--no-error-summary", "--show-error-codes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        report = (result.stdout + result.stderr).strip()
        pytest.fail(f"mypy found type errors (exit {result.returncode}):\n{report}", pytrace=False)

"""The layer order of the README's architecture section, enforced on every import of the package's source."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cascade_ranking"


def layer_order(readme: str) -> list[set[str]]:
    """The README's ``layers: a, b → c → ...`` line: one set of top-level names per layer, lowest first."""
    match = re.search(r"^layers: (.+)$", readme, flags=re.MULTILINE)
    assert match, "README.md: the architecture section has no 'layers: ...' line"
    return [{name.strip() for name in layer.split(",")} for layer in match.group(1).split("→")]


def top_name(module: str) -> str:
    """``cascade_ranking.training.loop`` -> ``training``; the package root itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import of this package in ``source`` (lazy ones included)."""
    out = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            else:
                names = [node.module or ""]
            out += [(node.lineno, n) for n in names if n.startswith("cascade_ranking")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("cascade_ranking")]
    return out


def violations(sources: dict[str, tuple[str, bool]], layers: list[set[str]]) -> list[str]:
    """Every import from a higher layer, or between two different top-level names of one layer."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    found = []
    for module, (source, is_package) in sources.items():
        here = top_name(module)
        if not here:  # the package root: lazy public facade, the top of everything
            continue
        assert here in rank, f"{module}: top-level name {here!r} is in no layer of the README's 'layers:' line"
        for line, target in imports_of(source, module, is_package):
            there = top_name(target)
            if not there or there == here or target == "cascade_ranking.__version__":  # the root's constant
                continue
            if there not in rank:
                found.append(f"{module}:{line} imports {target} (in no layer)")
            elif rank[there] > rank[here] or (rank[there] == rank[here]):
                found.append(f"{module}:{line} imports {target}: layer of {there!r} is not below {here!r}")
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(), is_package)
    return out


def test_every_import_goes_down_the_readme_layer_order():
    layers = layer_order((ROOT / "README.md").read_text())
    assert violations(package_sources(), layers) == []


def test_an_upward_import_is_caught():
    layers = layer_order((ROOT / "README.md").read_text())
    bad = {
        "cascade_ranking.data.store": ("from ..training.loop import train\n", False),
        "cascade_ranking.models.dssm": ("def f():\n    from ..metrics import joint_recall\n", False),
        "cascade_ranking.experiments.report": ("from ..training.runfiles import CONFIG_FILE\n", False),
    }
    found = violations(bad, layers)
    assert len(found) == 2
    assert "cascade_ranking.data.store:1 imports cascade_ranking.training.loop" in found[0]
    assert "cascade_ranking.models.dssm:2 imports cascade_ranking.metrics" in found[1]  # a peer, lazily


def test_the_tree_before_the_layout_change_would_fail():
    # today's tree had `data.ranktower_sampling` importing models and losses: data is below both
    layers = layer_order((ROOT / "README.md").read_text())
    old = {"cascade_ranking.data.ranktower_sampling": ("from ..models import DIN, DSSM\n", False)}
    assert violations(old, layers)


@pytest.mark.parametrize(
    "module",
    ["cascade_ranking.data.schema", "cascade_ranking.training.runfiles", "cascade_ranking.experiments.report"],
)
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(SRC.parent)})
    assert result.returncode == 0, f"importing {module} imports torch"


def test_every_loss_accepts_soft_label_as_a_keyword():
    import torch

    from cascade_ranking import losses

    torch.manual_seed(0)
    label = torch.rand(3, 12)
    mask = torch.ones(3, 12, dtype=torch.bool)
    stage = torch.randint(0, 3, (3, 12))
    for name in losses.REGISTRY:
        fn = losses.build(name, keep=[10, 8], gt_num=4)
        logits = [torch.randn(3, 12), torch.randn(3, 12)]
        a = fn(logits, label=label, mask=mask, stage=stage)
        b = fn(logits, label=label, mask=mask, stage=stage, soft_label=label * 0.5)
        assert torch.isfinite(a.loss) and torch.isfinite(b.loss), name

"""The public API: every module declares ``__all__``; every exported name exists and is documented; tensor-taking
functions and classes document their shapes; ``import cascade_ranking`` exposes a small API lazily."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cascade_ranking

ROOT = Path(__file__).resolve().parents[1]
#: ``python -m cascade_ranking`` runs the command line when imported: not a library module.
NOT_LIBRARY = {"cascade_ranking.__main__"}
MODULES = sorted(
    ["cascade_ranking"]
    + [
        m.name
        for m in pkgutil.walk_packages(cascade_ranking.__path__, prefix="cascade_ranking.")
        if m.name not in NOT_LIBRARY
    ]
)
#: A tensor shape in a docstring: ``[B, N]``, ``[B]``, ``[..., N]``, ``[V, E]``, ``[B, N, N]`` ...
SHAPE = re.compile(r"\[(?:\.\.\.|[A-Z][\w +*/-]*)(?:, *(?:\.\.\.|[\w +*/()-]+))*\]")
#: The top-level names the README and DESIGN.md promise.
DOCUMENTED_TOP_LEVEL = {
    "losses",
    "sorting",
    "metrics",
    "models",
    "neural_sort",
    "soft_sort",
    "Cascade",
    "RequestBatch",
    "DatasetSchema",
    "LossOutput",
    "TrainConfig",
    "build_model",
}


def _exported(module_name: str) -> list[tuple[str, object]]:
    """``(name, object)`` of the module's ``__all__`` (none when it has no ``__all__``: another test fails)."""
    module = importlib.import_module(module_name)
    return [(name, getattr(module, name)) for name in getattr(module, "__all__", [])]


def _own_doc(obj: object) -> str:
    """``obj``'s own docstring; a dataclass's generated ``Name(field: type, ...)`` signature does not count."""
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):
        return ""
    return doc


def _takes_tensors(fn: object) -> bool:
    """Whether a parameter of ``fn`` is annotated with a tensor or a request batch (annotations may be strings)."""
    try:
        params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(re.search(r"\bTensor\b|\bRequestBatch\b", str(p.annotation)) for p in params)


# ------------------------------------------------------------------------------------------------------
# every module
# ------------------------------------------------------------------------------------------------------
def test_the_module_list_is_complete():
    files = {
        ".".join(p.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "src" / "cascade_ranking").rglob("*.py")
    }
    assert files - NOT_LIBRARY == set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_module_declares_all(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, "__all__", None), list | tuple), f"{module_name} declares no __all__"
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    assert all(isinstance(n, str) and not n.startswith("_") for n in names), names
    assert _own_doc(module), f"{module_name} has no module docstring"


@pytest.mark.parametrize("module_name", MODULES)
def test_exported_names_exist_and_are_documented(module_name):
    module = importlib.import_module(module_name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"
    undocumented = [
        name
        for name, obj in _exported(module_name)
        if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)) and not _own_doc(obj)
    ]
    assert not undocumented, f"{module_name}: exported without a docstring: {undocumented}"


@pytest.mark.parametrize("module_name", MODULES)
def test_tensor_taking_api_documents_shapes_or_args(module_name):
    """A function taking tensors (or a class whose constructor or forward does) states shapes (``[B, N]``) or has
    an Args / Attributes section."""
    bad = []
    for name, obj in _exported(module_name):
        if getattr(obj, "__module__", None) != module_name:  # re-exports are checked where they are defined
            continue
        if inspect.isfunction(obj):
            takes, doc = _takes_tensors(obj), _own_doc(obj)
        elif inspect.isclass(obj):
            members = [getattr(obj, m) for m in ("__init__", "forward", "__call__") if m in vars(obj)]
            takes = any(_takes_tensors(m) for m in members)
            doc = "\n".join([_own_doc(obj)] + [inspect.getdoc(m) or "" for m in members])
        else:
            continue
        if takes and not (SHAPE.search(doc) or "Args:" in doc or "Attributes:" in doc):
            bad.append(name)
    assert not bad, f"{module_name}: take tensors but document neither shapes nor Args: {bad}"


def test_shape_pattern_matches_the_conventions():
    for text in ("``[B, N]``", "[B]", "[..., N]", "``[B, N, N]``", "[V, E]", "[B, (U + C) * E]", "[I + 1, D]"):
        assert SHAPE.search(text), text
    for text in ("a list [of things]", "see [1]", "[x for x in y]", "no shapes here"):
        assert not SHAPE.search(text), text


# ------------------------------------------------------------------------------------------------------
# the top-level package
# ------------------------------------------------------------------------------------------------------
def test_top_level_exposes_the_documented_names():
    assert DOCUMENTED_TOP_LEVEL <= set(cascade_ranking.__all__)
    assert set(cascade_ranking._LAZY) == set(cascade_ranking.__all__)
    assert set(cascade_ranking.__all__) <= set(dir(cascade_ranking))
    for name in cascade_ranking.__all__:
        value = getattr(cascade_ranking, name)
        target = cascade_ranking._LAZY[name]
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        assert value is (getattr(module, attribute) if attribute else module), name
    assert isinstance(cascade_ranking.__version__, str)


def test_top_level_objects_are_the_library_objects():
    from cascade_ranking.cascade import Cascade
    from cascade_ranking.losses import build
    from cascade_ranking.sorting import neural_sort

    assert cascade_ranking.Cascade is Cascade
    assert cascade_ranking.neural_sort is neural_sort
    assert cascade_ranking.losses.build is build
    # the README's library example, through the top-level names only
    torch = pytest.importorskip("torch")
    loss_fn = cascade_ranking.losses.build("lcron", keep=[3, 2], gt_num=1)
    logits = [torch.randn(2, 4, requires_grad=True) for _ in range(2)]
    out = loss_fn(
        logits,
        label=torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 2),
        mask=torch.ones(2, 4, dtype=torch.bool),
        stage=torch.tensor([[2, 1, 0, 0]] * 2),
    )
    assert isinstance(out, cascade_ranking.LossOutput) and isinstance(loss_fn, cascade_ranking.CascadeLoss)
    assert torch.isfinite(out.loss)


def test_unknown_top_level_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'train_cascade'"):
        cascade_ranking.train_cascade  # noqa: B018


def test_import_is_lazy():
    """``import cascade_ranking`` loads neither torch nor the submodules; the first access loads what it needs."""
    code = (
        "import sys, cascade_ranking as c\n"
        "assert 'torch' not in sys.modules and 'cascade_ranking.training.loop' not in sys.modules, 'eager import'\n"
        "c.DatasetSchema\n"
        "assert 'cascade_ranking.data.schema' in sys.modules and 'cascade_ranking.training.loop' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

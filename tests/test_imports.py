"""The import graph of ``study``, ``analysis`` and ``reports``, imports inside functions (and
under ``TYPE_CHECKING``) included: no cycle, and the analysis side reads the study side only
through the store's schema and engine (the loader's way in) and the errors."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("study", "analysis", "reports")
# What analysis/ and reports/ may import from study/: the contract and the way to open it.
# study.masking: how a storage URL is shown (no password), shared by every place that shows one.
# study.config and study.settings: the settings' declarations (no torch), from which the report's
# Methods table takes its rows.
ANALYSIS_MAY_IMPORT = {
    "study.errors",
    "study.store.schema",
    "study.store.engine",
    "study.masking",
    "study.config",
    "study.settings",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports a module; ``from mod import name`` imports ``mod``.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(path, module, modules) for module, path in modules.items()}


def test_the_graph_sees_imports_inside_functions(graph):
    # Guards the test itself: these are imported inside functions (or at the top) today.
    assert "study.plan" in graph["study.execute"]
    assert "study.tune" in graph["study.execute"]
    assert "study.store.schema" in graph["analysis.load"]
    assert "study.machine" in graph["study.costs"]


def test_no_import_cycle(graph):
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle through: {', '.join(exc.args[1])}")


def test_analysis_and_reports_read_study_only_through_the_store_schema(graph):
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.split(".")[0] in ("analysis", "reports")
        for target in targets
        if target.split(".")[0] == "study" and target not in ANALYSIS_MAY_IMPORT
    )
    assert not bad, bad

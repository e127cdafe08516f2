"""Every third-party package the code imports by name is declared in pyproject.toml's dependencies, not left to
arrive through another package (which may drop it, or move to a version the code was never run with)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CODE = ("multimodal", "stages", "flows")  # what the pipeline runs (tests and benchmarks have their own needs)
FIRST_PARTY = {"multimodal", "stages", "flows", "tests", "bench"}
# Modules a declared package pins exactly and documents as its own API: declaring them too could only conflict.
PART_OF = {"pydantic_core": "pydantic"}


def imported_top_levels() -> dict[str, str]:
    """{top-level module: a file importing it} over the pipeline's code, imports inside functions included."""
    found: dict[str, str] = {}
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_a_declared_dependency():
    declared = {canonicalize_name(Requirement(r).name)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = packages_distributions()
    undeclared = []
    for module, where in sorted(imported_top_levels().items()):
        if module in FIRST_PARTY or module in sys.stdlib_module_names or PART_OF.get(module) in declared:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & declared:
            undeclared.append(f"{module} (imported by {where}; installed from {sorted(dists) or 'nothing'})")
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"

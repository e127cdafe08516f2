"""The library's shape: one package per concern, imports pointing one way, no cycle, no module over 400 lines.

The graph is read from the source (every `import` statement, function-level ones included, as `stage_deps` reads
it), not from what one run happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "multimodal"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def named_modules(path: Path) -> set[str]:
    """The modules the import statements of `path` name: `from a.b import c` -> `a.b` and `a.b.c` (if a module).

    Unlike `stage_deps`, not the packages an import passes through: importing `a.b.c` runs `a/b/__init__.py`, but
    a module importing a sibling in its own package does not depend on that package's `__init__` by design.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def library_graph(root: Path = LIBRARY) -> dict[str, set[str]]:
    """{module: the library modules its import statements name} for every module under `root`."""
    files = {module_name(p): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    return {name: {m for m in named_modules(path) if m in files and m != name} for name, path in files.items()}


def package_of(module: str) -> str | None:
    """`multimodal.tuning.search` -> `tuning`; the library's own `__init__` belongs to none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def may_import(package: str) -> tuple[str, ...]:
    """The `MAY_IMPORT` tuple a package's `__init__.py` declares, read without importing it."""
    tree = ast.parse((LIBRARY / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MAY_IMPORT" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"multimodal/{package}/__init__.py declares no MAY_IMPORT")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Imports from one package into another that the importing package's `MAY_IMPORT` does not allow."""
    problems = []
    for module, imported in sorted(graph.items()):
        source = package_of(module)
        for target in sorted(imported):
            other = package_of(target)
            if source and other and other != source and other not in may_import(source):
                problems.append(f"{module} imports {target}: {source} may import only {may_import(source)}")
    return problems


def test_every_package_says_what_it_owns_and_may_import():
    packages = sorted(p.parent.name for p in LIBRARY.glob("*/__init__.py"))
    assert len(packages) >= 10
    for package in packages:
        init = LIBRARY / package / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
        assert set(may_import(package)) <= set(packages) - {package}, package
    assert [p.name for p in LIBRARY.glob("*.py")] == ["__init__.py"]  # every module lives in a package


def test_the_library_has_no_import_cycle():
    assert cycles(library_graph()) == []


def test_imports_point_the_declared_way():
    assert wrong_way(library_graph()) == []


def test_the_declared_directions_have_no_cycle_either():
    packages = {p.parent.name: set(may_import(p.parent.name)) for p in LIBRARY.glob("*/__init__.py")}
    assert cycles(packages) == []


def test_no_library_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in LIBRARY.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize("source", [
    # A cycle of two modules, and a storage module importing training: both found, each named.
    {"multimodal/storage/a.py": "from multimodal.storage.b import x\n",
     "multimodal/storage/b.py": "def f():\n    from multimodal.storage.a import y\n",
     "multimodal/storage/c.py": "from multimodal.training.t import fit\n",
     "multimodal/training/t.py": "fit = 1\n"},
])
def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch, source):
    for name, text in source.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ("storage", "training"):
        (tmp_path / "multimodal" / package / "__init__.py").write_text("MAY_IMPORT = ()\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    monkeypatch.setitem(globals(), "LIBRARY", tmp_path / "multimodal")
    graph = library_graph(tmp_path / "multimodal")
    assert cycles(graph) == [["multimodal.storage.a", "multimodal.storage.b"]]
    assert wrong_way(graph) == ["multimodal.storage.c imports multimodal.training.t: storage may import only ()"]

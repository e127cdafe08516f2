"""Checks that each stage's code `deps` in `dvc.yaml` are exactly the project modules its entry point imports.

Per-stage lists (rather than the whole library as one dependency) keep DVC's cache precise: editing
`multimodal/evaluation/evaluate.py` re-runs `evaluate`, not the 10-minute chain before it. Hand-kept lists drift,
so this module derives the truth from the code: the transitive closure of `import` statements (function-level imports
included, as the stages import heavy modules lazily) from `stages/<name>.py` within the project's packages.
A test runs the check; `python -m multimodal.pipeline.stage_deps` prints the lists dvc.yaml should hold, and
`python -m multimodal.pipeline.stage_deps --write` puts them there.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from multimodal.pipeline.stage_params import read_stages

PACKAGES = ("multimodal", "stages", "flows")
# Packages that import every module inside them at run time (the modality registry finds its modules with pkgutil):
# importing one of them may run any of its modules, which no import statement names.
DISCOVERING = ("multimodal.modalities",)


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (`multimodal.training.align` -> multimodal/training/align.py); None outside
    the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module an import statement anywhere in `path` names (`from a import b` -> `a` and `a.b`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # `import a.b` runs a/__init__
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            parts = base.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            found.update(f"{base}.{alias.name}" for alias in node.names)  # may be a submodule
    return found


def import_closure(root: Path, module: str) -> set[Path]:
    """Project files (relative to `root`) that importing `module` may execute."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name)
        if path is None:
            continue
        files.add(path.relative_to(root))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__.py first
        todo.extend(_imported_modules(path, name))
        if name in DISCOVERING:
            todo.extend(f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py")
    return files


def _entry_module(cmd: str) -> str | None:
    match = re.match(r"python\s+-m\s+([\w.]+)", cmd.strip())
    return match.group(1) if match else None


def covered_files(root: Path, deps: tuple[str, ...]) -> set[Path]:
    """Project Python files a stage's deps cover (a folder dep covers every .py file under it)."""
    out: set[Path] = set()
    for dep in deps:
        path = root / dep
        if path.is_dir():
            out.update(p.relative_to(root) for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py" and path.is_file():
            out.add(path.relative_to(root))
    return {p for p in out if p.parts[0] in PACKAGES}


def check(root: Path = Path(".")) -> dict[str, dict[str, list[str]]]:
    """{stage: {"missing": [...], "extra": [...]}} for every stage whose code deps differ from its imports."""
    root = root.resolve()
    problems = {}
    for name, stage in read_stages(root / "dvc.yaml").items():
        module = _entry_module(stage.cmd)
        if module is None:
            problems[name] = {"missing": [f"(cannot read the entry module from cmd {stage.cmd!r})"], "extra": []}
            continue
        imported, covered = import_closure(root, module), covered_files(root, stage.deps)
        missing, extra = sorted(map(str, imported - covered)), sorted(map(str, covered - imported))
        if missing or extra:
            problems[name] = {"missing": missing, "extra": extra}
    return problems


def suggested_deps(root: Path, stage: str) -> list[str]:
    """The code deps `stage` should list: its import closure, whole folders where the closure holds all of one."""
    stage_decl = read_stages(root / "dvc.yaml")[stage]
    files = import_closure(root.resolve(), _entry_module(stage_decl.cmd) or "")
    folders = sorted({p.parent for p in files if p.parent.parent != Path(".") and p.parent != Path(".")})
    out, folded = [], set()
    for folder in folders:
        inside = {p.relative_to(root) for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts}
        if inside <= files:
            out.append(str(folder))
            folded |= inside
    return sorted(out + [str(p) for p in files - folded])


def _is_code(dep: str) -> bool:
    return Path(dep).parts[:1] in [(p,) for p in PACKAGES]


def write(root: Path = Path(".")) -> list[str]:
    """Rewrite the code deps of every stage in `dvc.yaml` to `suggested_deps` (comments and data deps kept)."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and templating survive
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    doc = yaml.load(path.read_text())
    changed = []
    stages = read_stages(path)
    for name, body in doc["stages"].items():
        block = body["do"] if "foreach" in body else body
        expanded = next(s for s in stages if s == name or s.startswith(f"{name}@"))
        wanted = suggested_deps(root, expanded)
        deps = block.get("deps") or []
        if [d for d in deps if _is_code(d)] != wanted:
            block["deps"] = [*wanted, *(d for d in deps if not _is_code(d))]
            changed.append(name)
    if changed:
        with path.open("w") as handle:
            yaml.dump(doc, handle)
    return changed


def main() -> None:
    root = Path(".")
    if sys.argv[1:] == ["--write"]:
        print(f"rewrote the code deps of {write(root) or 'no stage'} in dvc.yaml")
    problems = check(root)
    for stage, diff in problems.items():
        print(f"{stage}: missing {diff['missing']}, not imported {diff['extra']}\n  deps should list: "
              f"{suggested_deps(root, stage)}")
    if not problems:
        print("dvc.yaml code deps match what every stage imports")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

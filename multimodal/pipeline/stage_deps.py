"""Checks that each stage's code `deps` in `dvc.yaml` are exactly the project modules its entry point imports.

Per-stage lists (rather than the whole library as one dependency) keep DVC's cache precise: editing
`multimodal/evaluation/evaluate.py` re-runs `evaluate`, not the 10-minute chain before it. Hand-kept lists drift,
so this module derives the truth from the code: the transitive closure of `import` statements (function-level imports
included, as the stages import heavy modules lazily) from `stages/<name>.py` within the project's packages.
A test runs the check; `python -m multimodal.pipeline.stage_deps` prints the lists dvc.yaml should hold, and
`python -m multimodal.pipeline.stage_deps --write` puts them there.

The inputs params.yaml names (`multimodal.pipeline.params_inputs`) are generated the same way: a modality module of
the user's is one of the modules the registry imports (with what it imports inside the project), a local checkpoint
folder a dep of each stage that loads it; such deps carry the comment `INPUT_MARK` so a rewrite can drop them when
params stop naming them. A `foreach` stage's copies share one deps list: each `preprocess@<m>` lists the checkpoint
folders of every preprocessed modality (DVC's templating cannot pick one modality's).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

from multimodal.pipeline.params_inputs import (
    checkpoint_folders,
    declared_modalities,
    loads_checkpoints,
    plugin_modules,
)
from multimodal.pipeline.stage_params import StageDecl, read_stages

PACKAGES = ("multimodal", "stages", "flows")
INPUT_MARK = "# params.yaml names it:"  # the comment of a generated dep outside PACKAGES
# Packages that import every module inside them at run time (the modality registry finds its modules with pkgutil):
# importing one of them may run any of its modules, which no import statement names.
DISCOVERING = ("multimodal.modalities",)


def tops(plugins: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The top-level packages whose modules are project code: ours, and those of the user's modality modules."""
    return tuple(dict.fromkeys((*PACKAGES, *(p.split(".")[0] for p in plugins))))


def module_file(root: Path, module: str, packages: tuple[str, ...] = PACKAGES) -> Path | None:
    """The file of a project module (`multimodal.training.align` -> multimodal/training/align.py); None outside
    the project."""
    if module.split(".")[0] not in packages:
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


def import_closure(root: Path, module: str, plugins: list[str] | tuple[str, ...] = ()) -> set[Path]:
    """Project files (relative to `root`) that importing `module` may execute; the registry (`DISCOVERING`) imports
    the user's modality modules `plugins` too."""
    packages = tops(plugins)
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name, packages)
        if path is None:
            continue
        files.add(path.relative_to(root))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__.py first
        todo.extend(_imported_modules(path, name))
        if name in DISCOVERING:
            todo.extend(f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py")
            todo.extend(plugins)
    return files


def _entry_module(cmd: str) -> str | None:
    match = re.match(r"python\s+-m\s+([\w.]+)", cmd.strip())
    return match.group(1) if match else None


def covered_files(root: Path, deps: tuple[str, ...], packages: tuple[str, ...] = PACKAGES) -> set[Path]:
    """Project Python files a stage's deps cover (a folder dep covers every .py file under it)."""
    out: set[Path] = set()
    for dep in deps:
        path = root / dep
        if path.is_dir():
            out.update(p.relative_to(root) for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py" and path.is_file():
            out.add(path.relative_to(root))
    return {p for p in out if p.parts[0].removesuffix(".py") in packages}


def read_raw_params(root: Path) -> dict:
    path = root / "params.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def checkpoint_deps(root: Path, stage: StageDecl, raw: dict) -> dict[str, str]:
    """{local checkpoint folder: the params key naming it} that `stage` loads (its module sets LOADS_CHECKPOINTS)."""
    entry = module_file(root, _entry_module(stage.cmd) or "")
    if entry is None or not loads_checkpoints(entry):
        return {}
    return checkpoint_folders(raw, root, declared_modalities(stage.params, raw))


def _entry_checkpoints(root: Path, stages: dict[str, StageDecl], name: str, raw: dict) -> dict[str, str]:
    """The checkpoint deps of dvc.yaml's entry `name` (a `foreach` one: of all its copies, which share deps)."""
    out: dict[str, str] = {}
    for full, stage in stages.items():
        if full.split("@")[0] == name:
            out |= checkpoint_deps(root, stage, raw)
    return out


def check(root: Path = Path(".")) -> dict[str, dict[str, list[str]]]:
    """{stage: {"missing": [...], "extra": [...]}} for every stage whose code deps differ from its imports, or
    that lacks a checkpoint folder it loads."""
    root = root.resolve()
    raw = read_raw_params(root)
    plugins = plugin_modules(raw)
    problems = {}
    stages = read_stages(root / "dvc.yaml")
    for name, stage in stages.items():
        module = _entry_module(stage.cmd)
        if module is None:
            problems[name] = {"missing": [f"(cannot read the entry module from cmd {stage.cmd!r})"], "extra": []}
            continue
        imported, covered = import_closure(root, module, plugins), covered_files(root, stage.deps, tops(plugins))
        missing, extra = sorted(map(str, imported - covered)), sorted(map(str, covered - imported))
        listed = {d.rstrip("/") for d in stage.deps}
        missing += [f"{folder} ({key})" for folder, key in
                    _entry_checkpoints(root, stages, name.split("@")[0], raw).items() if folder not in listed]
        if missing or extra:
            problems[name] = {"missing": missing, "extra": extra}
    return problems


def missing_inputs(root: Path, stage: str, dvc_yaml: Path, raw: dict) -> list[str]:
    """The inputs params name that `stage` loads but its deps in `dvc_yaml` lack (`load_params` refuses to run
    it then): a checkpoint folder, or a file of a modality module of the user's. Cheap when params name neither."""
    root, plugins = root.resolve(), plugin_modules(raw)
    decl = read_stages(dvc_yaml)[stage]
    listed = {d.rstrip("/") for d in decl.deps}
    out = [f"{folder} (named by {key})" for folder, key in checkpoint_deps(root, decl, raw).items()
           if folder not in listed]
    if plugins:
        covered = covered_files(root, decl.deps, tops(plugins))
        if Path("multimodal/modalities/__init__.py") in covered:  # it imports the registry, which imports them
            files = set().union(*(import_closure(root, p, plugins) for p in plugins))
            out += [f"{f} (imported with the modules modalities.<m>.module names: {plugins})"
                    for f in sorted(files - covered)]
    return out


def input_files(root: Path, module: str, raw: dict, modalities: list[str]) -> list[Path]:
    """Every file running `module` reads beside its data (the tune study's fingerprint): the project code it imports
    (the user's modality modules included) and the files of the local checkpoint folders of `modalities`."""
    code = [root / p for p in import_closure(root, module, plugin_modules(raw))]
    checkpoints = [p for folder in checkpoint_folders(raw, root, modalities) for p in (root / folder).rglob("*")
                   if p.is_file()]
    return code + checkpoints


def suggested_deps(root: Path, stage: str) -> list[str]:
    """The code deps `stage` should list: its import closure, whole folders where the closure holds all of one."""
    stage_decl = read_stages(root / "dvc.yaml")[stage]
    files = import_closure(root.resolve(), _entry_module(stage_decl.cmd) or "", plugin_modules(read_raw_params(root)))
    folders = sorted({p.parent for p in files if p.parent.parent != Path(".") and p.parent != Path(".")})
    out, folded = [], set()
    for folder in folders:
        inside = {p.relative_to(root) for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts}
        if inside <= files:
            out.append(str(folder))
            folded |= inside
    return sorted(out + [str(p) for p in files - folded])


def _is_code(dep: str, packages: tuple[str, ...] = PACKAGES) -> bool:
    return Path(dep).parts[0].removesuffix(".py") in packages


def _generated(deps, index: int) -> bool:
    """Whether item `index` of a ruamel deps list carries `INPUT_MARK` (a dep a rewrite generated)."""
    comment = deps.ca.items.get(index) if hasattr(deps, "ca") else None
    return bool(comment and comment[0] is not None and comment[0].value.strip().startswith(INPUT_MARK))


def _marked(deps) -> list[tuple[str, bool]]:
    return [(d, _generated(deps, i)) for i, d in enumerate(deps)]


def write(root: Path = Path(".")) -> list[str]:
    """Rewrite the generated deps of every stage in `dvc.yaml`: code deps to `suggested_deps`, and the checkpoint
    folders its stages load (comments and data deps kept)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()  # round-trip: comments, order and templating survive
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    doc = yaml.load(path.read_text())
    raw = read_raw_params(root)
    packages = tops(plugin_modules(raw))
    changed = []
    stages = read_stages(path)
    for name, body in doc["stages"].items():
        block = body["do"] if "foreach" in body else body
        expanded = next(s for s in stages if s == name or s.startswith(f"{name}@"))
        wanted = {d: None if _is_code(d) else "a module of modalities.<m>.module" for d in suggested_deps(root, expanded)}
        wanted |= {folder: key for folder, key in _entry_checkpoints(root, stages, name, raw).items()}
        deps = block.get("deps") or CommentedSeq()
        kept = [i for i, d in enumerate(deps) if not (_is_code(d, packages) or _generated(deps, i))]
        new = CommentedSeq([*wanted, *(deps[i] for i in kept)])
        for i, why in enumerate(wanted.values()):
            if why is not None:
                new.yaml_add_eol_comment(f"{INPUT_MARK} {why}", i)
        for j, i in enumerate(kept):  # a kept dep keeps its own comment
            if hasattr(deps, "ca") and i in deps.ca.items:
                new.ca.items[len(wanted) + j] = deps.ca.items[i]
        if _marked(new) != _marked(deps):
            block["deps"] = new
            changed.append(name)
    if changed:
        with path.open("w") as handle:
            yaml.dump(doc, handle)
    return changed


def main() -> None:
    root = Path(".")
    if sys.argv[1:] == ["--write"]:
        print(f"rewrote the generated deps of {write(root) or 'no stage'} in dvc.yaml")
    problems = check(root)
    for stage, diff in problems.items():
        print(f"{stage}: missing {diff['missing']}, not imported {diff['extra']}\n  deps should list: "
              f"{suggested_deps(root, stage)}")
    if not problems:
        print("dvc.yaml deps match what every stage imports and the checkpoint folders it loads")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

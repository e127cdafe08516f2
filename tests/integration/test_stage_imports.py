"""dvc.yaml's code deps checked against what each stage really loads, independently of the static analysis.

`test_stage_contract.py` derives the expected deps with `import_closure`, the same analysis that wrote dvc.yaml, so
a blind spot of that analysis (an `importlib.import_module(name)`, a module named in a string, a pickle) would be
in both. Here a tiny pipeline runs for real (`dvc repro`, every stage's own `python -m stages.<name>` command) with
a `sitecustomize` on PYTHONPATH that, when a stage process exits, writes the project modules it had loaded
(`sys.modules`). Every one of them must be covered by that stage's deps; the deps may list more (lazy imports this
run did not take), which is only reported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from flows.workspace import REPO, copy_project, project_env
from multimodal.pipeline.stage_deps import PACKAGES, covered_files
from multimodal.pipeline.stage_params import read_stages
from tests.integration.conftest import TINY_PARAMS

pytestmark = pytest.mark.integration

STAGES = sorted(read_stages(REPO / "dvc.yaml"))

# Runs in every Python process of the pipeline (PYTHONPATH); only a `python -m stages.<name>` process writes its
# modules, at exit, to $STAGE_IMPORTS_DIR/<module>[@<args>].<pid>.json.
HOOK = '''
import atexit
import json
import os
import sys

PACKAGES = {packages!r}


def _dump():
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(spec, "name", None) or ""
    if not module.startswith("stages."):
        return
    loaded = {{}}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path and (name == "__main__" or name.split(".")[0] in PACKAGES):
            loaded[name] = os.path.realpath(path)
    tag = "@".join([module, *sys.argv[1:]])
    with open(os.path.join(os.environ["STAGE_IMPORTS_DIR"], f"{{tag}}.{{os.getpid()}}.json"), "w") as handle:
        json.dump({{"module": module, "argv": sys.argv[1:], "loaded": loaded}}, handle)


atexit.register(_dump)
'''


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict], float]:
    """One tiny `dvc repro` under the hook: (project, {stage: its dump}, seconds)."""
    base = tmp_path_factory.mktemp("stage_imports")
    project = copy_project(base / "project", TINY_PARAMS)
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(HOOK.format(packages=PACKAGES))
    dumps = base / "imports"
    dumps.mkdir()
    env = project_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "hook"), env.get("PYTHONPATH")) if p)
    env["STAGE_IMPORTS_DIR"] = str(dumps)
    start = time.monotonic()
    # --no-run-cache: every stage command runs (none is restored from a run recorded before).
    done = subprocess.run(["dvc", "repro", "--no-run-cache"], cwd=project, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    ran = set(re.findall(r"Running stage '([^']+)'", done.stdout))
    assert ran == set(STAGES), f"dvc repro ran {sorted(ran)}, dvc.yaml has {STAGES}"
    by_stage: dict[str, dict] = {}
    cmds = {name: stage.cmd.split() for name, stage in read_stages(project / "dvc.yaml").items()}
    for path in sorted(dumps.glob("*.json")):
        dump = json.loads(path.read_text())
        # `python -m stages.preprocess image` -> preprocess@image: the stage whose cmd this process was.
        [stage] = [n for n, cmd in cmds.items() if cmd[2:] == [dump["module"], *dump["argv"]]]
        assert stage not in by_stage, f"two processes ran {stage}'s command"
        by_stage[stage] = dump
    print(f"dvc repro of {len(STAGES)} stages under the import hook: {seconds:.0f} s")
    return project, by_stage, seconds


def project_files(project: Path, dump: dict) -> tuple[set[Path], dict[str, str]]:
    """The project files a stage process loaded, relative to `project`, and any project module loaded from
    elsewhere (another checkout, an installed copy): {module: file}."""
    root = project.resolve()
    files, outside = set(), {}
    for name, path in dump["loaded"].items():
        path = Path(path)
        if path.is_relative_to(root):
            files.add(path.relative_to(root))
        else:
            outside[name] = str(path)
    return {f for f in files if f.parts[0] in PACKAGES}, outside


def test_every_stage_ran_under_the_hook(loaded) -> None:
    _, by_stage, seconds = loaded
    assert sorted(by_stage) == STAGES, "stages without an import dump (did one exit through os._exit?)"
    print(f"{len(by_stage)} stage processes traced in {seconds:.0f} s")


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_loads_is_one_of_its_deps(loaded, stage: str) -> None:
    project, by_stage, _ = loaded
    if stage not in by_stage:
        pytest.fail(f"{stage}: no import dump (see test_every_stage_ran_under_the_hook)")
    files, outside = project_files(project, by_stage[stage])
    entry = Path(*by_stage[stage]["module"].split(".")).with_suffix(".py")
    assert entry in files, f"{stage}: its entry point {entry} is not among the files it loaded: {sorted(files)}"
    assert not outside, f"{stage}: project modules loaded from outside the project copy: {outside}"
    covered = covered_files(project, read_stages(project / "dvc.yaml")[stage].deps)
    missing = sorted(map(str, files - covered))
    unused = covered - files
    assert not missing, (
        f"{stage} loaded {len(files)} project files; {len(missing)} are not among its dvc.yaml deps: {missing} "
        f"(listed but not loaded on this run: {len(unused)} of {len(covered)})")

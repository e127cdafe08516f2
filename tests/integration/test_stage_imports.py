"""dvc.yaml's code deps checked against what each stage really loads, independently of the static analysis.

`test_stage_contract.py` derives the expected deps with `import_closure`, the same analysis that wrote dvc.yaml, so
a blind spot of that analysis (an `importlib.import_module(name)`, a module named in a string, a pickle) would be
in both. Here the test run's shared tiny run (every stage's own `python -m stages.<name>` command, through `dvc
repro`; tests/integration/built.py) runs with a `sitecustomize` on PYTHONPATH that, when a stage process exits,
writes the project modules it had loaded (`sys.modules`). Every one of them must be covered by that stage's deps; the deps may list more (lazy imports this
run did not take), which is only reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.workspace import REPO
from multimodal.pipeline.stage_deps import PACKAGES, covered_files
from multimodal.pipeline.stage_params import read_stages
from tests.integration.built import Built

pytestmark = pytest.mark.integration

STAGES = sorted(read_stages(REPO / "dvc.yaml"))


@pytest.fixture(scope="module")
def loaded(built: Built) -> tuple[Path, dict[str, dict], float]:
    """The shared tiny run, under the import hook: (project, {stage: its dump}, seconds)."""
    assert built.stages_run() == set(STAGES), f"the run ran {sorted(built.stages_run())}, dvc.yaml has {STAGES}"
    by_stage: dict[str, dict] = {}
    cmds = {name: stage.cmd.split() for name, stage in read_stages(built.project / "dvc.yaml").items()}
    for dump in built.stage_records():
        # `python -m stages.preprocess image` -> preprocess@image: the stage whose cmd this process was.
        [stage] = [n for n, cmd in cmds.items() if cmd[2:] == [dump["module"], *dump["argv"]]]
        assert stage not in by_stage, f"two processes ran {stage}'s command"
        by_stage[stage] = dump
    return built.project, by_stage, built.seconds


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

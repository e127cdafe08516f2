"""dvc.yaml tells the truth: code deps are what each stage imports, params are what it reads, and DVC's status marks
exactly the stages an edit concerns.

Status is asked of DVC in this process (`flows.dvc_tools`, what `dvc status --json` prints; test_flow checks the two
agree): a `dvc` process per question cost more than the question.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from flows import dvc_tools
from flows.workspace import REPO, copy_project, run, set_params
from multimodal.pipeline.params import load_params
from multimodal.pipeline.stage_deps import check, import_closure, suggested_deps
from multimodal.pipeline.stage_params import UndeclaredParam, read_stages
from stages.evaluate import PARAMS as EVALUATE
from stages.preprocess import PARAMS as PREPROCESS

pytestmark = pytest.mark.integration


def test_every_stage_declares_exactly_the_code_it_imports() -> None:
    problems = check(REPO)
    fixes = {stage: suggested_deps(REPO, stage) for stage in problems}
    assert not problems, f"dvc.yaml code deps differ from the imports: {problems}\n" \
                         f"run `python -m multimodal.pipeline.stage_deps --write`, or set deps to: {fixes}"


def test_import_closure_follows_lazy_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "multimodal" / "sub").mkdir(parents=True)
    for name in ("stages/__init__.py", "multimodal/__init__.py", "multimodal/sub/__init__.py",
                 "multimodal/unused.py", "multimodal/sub/deep.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "stages/s.py").write_text("import os\n\ndef main():\n    from multimodal.lazy import f\n")
    (tmp_path / "multimodal/lazy.py").write_text("from .sub import deep\nimport numpy\n")
    assert import_closure(tmp_path, "stages.s") == {Path(p) for p in (
        "stages/__init__.py", "stages/s.py", "multimodal/__init__.py", "multimodal/lazy.py",
        "multimodal/sub/__init__.py", "multimodal/sub/deep.py")}


def test_a_stage_reads_only_the_params_it_declares() -> None:
    evaluate = load_params(REPO / "params.yaml", stage="evaluate", schema=EVALUATE)
    assert evaluate.evaluate.batch_size >= 1 and evaluate.base.paths.models  # declared; paths always readable
    with pytest.raises(UndeclaredParam, match=r"stage 'evaluate' reads params key 'tune'.*dvc.yaml"):
        evaluate.tune
    image = load_params(REPO / "params.yaml", stage="preprocess@image", schema=PREPROCESS)
    assert image.modalities["image"].options  # its own modality section
    with pytest.raises(UndeclaredParam, match="'modalities.audio'"):
        image.modalities["audio"]
    with pytest.raises(UndeclaredParam, match="'base.seed'"):
        image.base.seed
    assert image.reads == {"modalities.image"}


# ---------------------------------------------------------------- a real `dvc status` after one edit


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch copy whose dvc.lock matches its code and params (outputs stand in as placeholders)."""
    yield commit_placeholders(copy_project(tmp_path_factory.mktemp("contract") / "project"))


def commit_placeholders(project: Path) -> Path:
    """`project` with a dvc.lock matching its code and params, every output standing in as a placeholder."""
    from dvc.repo import Repo

    cwd = os.getcwd()
    os.chdir(project)  # DVC resolves stage paths against the process cwd
    try:
        with Repo(".") as repo:
            for out in repo.index.outs:
                path = Path(out.fs_path)
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("x")
            _stand_in_missing(repo.index.deps)  # files inside an upstream output folder (data/raw/manifest.csv)
            repo.commit(force=True)
    finally:
        os.chdir(cwd)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}
    return project


def _stand_in_missing(items) -> None:
    """A stand-in for each of these outs or deps that is not there: a file where the path has a suffix."""
    for item in items:
        path = Path(item.fs_path)
        if not path.exists():
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x")


def _changed_stages(project: Path) -> dict[str, list]:
    """`dvc status --json` of `project`, asked in process (from the project folder: DVC words paths from the cwd)."""
    with contextlib.chdir(project):
        changes = dvc_tools.read_pipeline(project, status=True).changes
    assert changes is not None, "someone holds the DVC repository lock"
    return changes


def _importers(module_file: str) -> set[str]:
    stages = read_stages(REPO / "dvc.yaml")
    entry = {name: s.cmd.split()[2] for name, s in stages.items()}
    return {name for name, module in entry.items() if Path(module_file) in import_closure(REPO, module)}


BEFORE_TUNE = {name for name in read_stages(REPO / "dvc.yaml") if name.split("@")[0] in
               ("demo", "ingest", "validate", "preprocess", "baseline", "align")}


@pytest.mark.parametrize(("module_file", "must_include", "must_exclude"), [
    ("multimodal/evaluation/evaluate.py", {"evaluate"}, {"tune", "align", "ingest"}),
    ("multimodal/training/train.py", {"tune", "evaluate"}, {"ingest", "validate"}),
    ("multimodal/demo/speech.py", {"demo"}, {"ingest", "validate", "tune"}),
    # Every stage reading a manifest imports the modality registry, which imports every modality module.
    ("multimodal/modalities/audio.py", {"preprocess@audio", "align", "validate"}, set()),
    # The params loader: every stage.
    ("multimodal/pipeline/params.py", set(read_stages(REPO / "dvc.yaml")), set()),
    # Code only tune runs (the search-space schema, the trial tables, study resume): no stage before align re-runs.
    ("multimodal/tuning/params.py", {"tune"}, BEFORE_TUNE),
    ("multimodal/tuning/results.py", {"tune"}, BEFORE_TUNE | {"report"}),
    ("multimodal/tuning/resume.py", {"tune"}, BEFORE_TUNE | {"report"}),
])
def test_editing_a_module_marks_exactly_the_stages_that_import_it(committed: Path, module_file: str,
                                                                    must_include: set[str],
                                                                    must_exclude: set[str]) -> None:
    path = committed / module_file
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        changed = _changed_stages(committed)
    finally:
        path.write_bytes(original)
    assert set(changed) == _importers(module_file)
    assert must_include <= set(changed) and not (must_exclude & set(changed)), changed
    for entry in changed.values():  # only that file changed (a folder dep reports the folder holding it)
        [[kind, deps]] = [next(iter(e.items())) for e in entry]
        assert kind == "changed deps" and all(module_file.startswith(d) and how == "modified"
                                              for d, how in deps.items()), changed


# The report shows the params sections it declares, so it re-renders whenever one of them changes.
@pytest.mark.parametrize(("keys", "value", "readers"), [
    (("align", "lr"), 0.01, {"align", "report"}),
    (("evaluate", "batch_size"), 100, {"evaluate", "report"}),
    (("tune", "num_samples"), 3, {"tune", "report"}),
    (("base", "device"), "cpu", {"align", "tune", "ensemble", "evaluate", "compress"}),
    # tune too: a searched input_norm of a modality align caches is refused (multimodal.tuning.params).
    (("align", "freeze"), [], {"align", "tune", "report"}),
    # Not evaluate: it encodes corrupted inputs with the encoders align saved, not ones rebuilt from this section.
    # baseline too: its saved classical models record the processing settings they were fitted on.
    (("modalities", "audio", "num_mel_bins"), 32, {"preprocess@audio", "baseline", "align", "report"}),
    (("report", "max_rows"), 10, {"report"}),
])
def test_changing_a_params_key_marks_exactly_its_readers(committed: Path, keys: tuple[str, ...], value,
                                                         readers: set[str]) -> None:
    path = committed / "params.yaml"
    original = path.read_bytes()
    params = yaml.safe_load(original)
    node = params
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    try:
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = _changed_stages(committed)
    finally:
        path.write_bytes(original)
    assert set(changed) == readers, changed


def test_your_dataset_folder_is_a_dependency_of_ingest(tmp_path: Path) -> None:
    """Bring-your-own data outside the repository: editing, adding or removing a file there makes `ingest` stale."""
    from PIL import Image

    dataset = tmp_path / "my_dataset"
    (dataset / "img").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(dataset / "img" / f"{i}.png")
    (dataset / "manifest.csv").write_text("sample_id,label,split,image,text\n" + "".join(
        f"s{i},{'ab'[i % 2]},{['train', 'train', 'val', 'test'][i]},img/{i}.png,text {i}\n" for i in range(4)))
    project = copy_project(tmp_path / "project", {("ingest", "dataset"): str(dataset)})
    run(["dvc", "repro", "ingest"], project)  # the demo is no upstream of ingest now: only ingest runs
    assert not (project / "data" / "demo").exists()
    status = lambda: _changed_stages(project).get("ingest", [])  # noqa: E731
    assert status() == []
    original = {name: (dataset / "img" / name).read_bytes() for name in ("0.png", "3.png")}
    # Each edit, then its undoing: DVC compares the folder's content, so the original bytes are up to date again.
    for edit, undo in (
        (lambda: Image.new("L", (8, 8), color=255).save(dataset / "img" / "0.png"),  # changed in place
         lambda: (dataset / "img" / "0.png").write_bytes(original["0.png"])),
        (lambda: (dataset / "img" / "extra.png").write_bytes(original["0.png"]),  # added
         lambda: (dataset / "img" / "extra.png").unlink()),
        (lambda: (dataset / "img" / "3.png").unlink(),  # removed
         lambda: (dataset / "img" / "3.png").write_bytes(original["3.png"])),
    ):
        edit()
        assert status() == [{"changed deps": {str(dataset): "modified"}}], status()
        undo()
        assert status() == [], status()
    edit()  # the last one again, reproduced this time: ingest takes the folder as it is now
    assert status() == [{"changed deps": {str(dataset): "modified"}}], status()
    run(["dvc", "repro", "ingest"], project)
    assert status() == []


def test_a_changed_file_reruns_ingest_then_validate_and_only_the_preprocess_of_its_modality(tmp_path: Path) -> None:
    """validate and preprocess@<m> depend on ingest's manifest and listings of the files' md5 (data/raw/.contents),
    not on its folder: new bytes in one image re-run ingest, then validate and preprocess@image, nothing else."""
    import numpy as np
    import soundfile as sf
    from dvc.repo import Repo
    from PIL import Image

    dataset = tmp_path / "my_dataset"
    for folder in ("img", "wav"):
        (dataset / folder).mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(dataset / "img" / f"{i}.png")
        sf.write(dataset / "wav" / f"{i}.wav", np.full(800, 0.1 * (i + 1), dtype=np.float32), 16000)
    (dataset / "manifest.csv").write_text("sample_id,label,split,image,audio,text\n" + "".join(
        f"s{i},{'ab'[i % 2]},{['train', 'train', 'val', 'test'][i]},img/{i}.png,wav/{i}.wav,text {i}\n"
        for i in range(4)))
    project = copy_project(tmp_path / "project", {("ingest", "dataset"): str(dataset)})
    run(["dvc", "repro", "ingest"], project)

    def commit_the_rest() -> None:  # every stage after ingest up to date, over stand-in outputs
        cwd = os.getcwd()
        os.chdir(project)
        try:
            with Repo(".") as repo:
                _stand_in_missing([*repo.index.outs, *repo.index.deps])
                repo.commit(force=True)
        finally:
            os.chdir(cwd)
        assert _changed_stages(project) == {}  # nothing changed: nothing to run

    commit_the_rest()
    for modality, edit in (("image", lambda: Image.new("L", (8, 8), color=255).save(dataset / "img" / "1.png")),
                           ("audio", lambda: sf.write(dataset / "wav" / "2.wav", np.zeros(800, np.float32), 16000))):
        edit()
        assert _changed_stages(project) == {"ingest": [{"changed deps": {str(dataset): "modified"}}]}
        run(["dvc", "repro", "ingest"], project)
        assert _changed_stages(project) == {
            "validate": [{"changed deps": {"data/raw/.contents": "modified"}}],
            f"preprocess@{modality}": [{"changed deps": {f"data/raw/.contents/{modality}.json": "modified"}}],
        }, modality
        commit_the_rest()


# ---------------------------------------------------------------- inputs params.yaml names

# A modality of the user's, in two files of the project (the second one is imported by the first).
PLUGIN = {
    "myplugins/__init__.py": "",
    "myplugins/parse.py": "def parse(cell):\n    return [float(v) for v in cell.split()]\n",
    "myplugins/beads.py": """\
import torch
from pydantic import BaseModel

from multimodal.modalities.base import Modality
from myplugins.parse import parse


class Checks(BaseModel):
    pass


MODALITY = Modality(
    name="beads", reads_file=False, probe=lambda cell, checks: {"values": len(parse(cell))},
    profile_fields={"values": "Int64"}, checks=Checks, row_checks=lambda ex, checks: [],
    load=lambda cell, root, spec, processor: parse(cell), build_processor=lambda spec: None,
    process=lambda processor, items, spec: {"values": torch.tensor(items)}, build_encoder=lambda spec: None,
    options=())
""",
}


def test_a_modality_module_and_a_checkpoint_folder_that_params_name_are_deps_of_their_loaders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing the user's modality module marks every stage importing the modality registry; replacing a file of a
    local tokenizer folder marks the stages that load it (align, baseline; every preprocess@<m>: a foreach's copies
    share their deps). A stage whose deps lack either refuses to start, naming it and the command that adds it."""
    import shutil

    from multimodal.modalities.checkpoints import local_path
    from multimodal.pipeline.params import ParamsError
    from stages.align import PARAMS as ALIGN

    project = copy_project(tmp_path / "project", {
        ("modalities", "text", "pretrained"): None,
        ("modalities", "text", "tokenizer"): "checkpoints/tok",
        ("modalities", "beads"): {"pretrained": None, "config": {}, "module": "myplugins.beads"},
    })
    shutil.copytree(local_path("minilm"), project / "checkpoints" / "tok",
                    ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    for name, text in PLUGIN.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    monkeypatch.syspath_prepend(str(project))  # the module is importable from the project folder, as a stage runs
    with pytest.raises(ParamsError, match=r"(?s)stage 'align' loads inputs.*checkpoints/tok \(named by "
                                          r"modalities\.text\.tokenizer\).*myplugins/beads\.py.*myplugins/parse\.py"
                                          r".*stage_deps --write"):
        load_params(project / "params.yaml", stage="align", schema=ALIGN)

    run(["python", "-m", "multimodal.pipeline.stage_deps", "--write"], project)
    assert check(project) == {}
    assert load_params(project / "params.yaml", stage="align", schema=ALIGN).modalities["beads"].module
    commit_placeholders(project)
    every_stage = _importers("multimodal/modalities/__init__.py")
    # baseline saves the tokenizer with its classical text model.
    loaders = {"align", "baseline", *(s for s in read_stages(project / "dvc.yaml") if s.startswith("preprocess@"))}
    for edited, dep, stages in (("myplugins/parse.py", "myplugins/parse.py", every_stage),
                                ("checkpoints/tok/vocab.txt", "checkpoints/tok", loaders)):
        path = project / edited
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\nanother\n")
            changed = _changed_stages(project)
        finally:
            path.write_bytes(original)
        assert set(changed) == stages, (edited, changed)
        assert all(entry == [{"changed deps": {dep: "modified"}}] for entry in changed.values()), changed
    assert _changed_stages(project) == {}

    # Params name them no more: a rewrite drops them.
    set_params(project, {("modalities", "text", "tokenizer"): "minilm", ("modalities", "beads"): None})
    run(["python", "-m", "multimodal.pipeline.stage_deps", "--write"], project)
    text = (project / "dvc.yaml").read_text()
    assert "checkpoints/tok" not in text and "myplugins" not in text

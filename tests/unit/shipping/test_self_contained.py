"""A saved model is a self-contained artifact: `predict` reads its folder and the manifest, nothing else, from any
working directory (the tokenizer named by a relative path at training time comes from the model folder); a modality
of the user's is imported from the module the model records, or refused naming that module."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import multimodal.modalities as registry_module
from multimodal.data.manifest import SPLITS
from multimodal.modalities import register_module
from multimodal.modalities.checkpoints import local_path
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import bundle_inputs
from multimodal.models.model import save_model
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.storage.dataset import load_split
from multimodal.training.align import build_encoders
from multimodal.training.finetune import initial_model
from stages.predict import main
from tests.unit.conftest import TINY_SPECS, train_config, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = ["x", "y", "z"]
TOY = "tests.integration.test_toy_modality"  # a modality module outside the library (test_toy_modality.py)
# A config-built BERT whose vocabulary comes from a tokenizer folder named relative to the project folder.
TEXT = ModalitySpec.model_validate({**TINY_SPECS["text"].model_dump(), "tokenizer": "checkpoints/tok"})
TOY_SPEC = ModalitySpec(pretrained=None, config={}, module=TOY, n_values=4, hidden=8)


def write_manifest(folder: Path, modalities: list[str], n: int = 9) -> Path:
    folder.mkdir(parents=True)
    cells = {"text": lambda i: f"word {LABELS[i % 3]} number {i}",
             "toy": lambda i: " ".join(str(float(i % 3 == k)) for k in range(4))}
    rows = [{"sample_id": f"s{i}", "label": LABELS[i % 3], **{m: cells[m](i) for m in modalities}} for i in range(n)]
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def build_model(project: Path, specs: dict[str, ModalitySpec]) -> Path:
    """`project/models/best` as preprocess, align and tune write it (untrained weights), run from `project`."""
    modalities = list(specs)
    manifest = write_manifest(project / "dataset", modalities)
    frame = pd.read_csv(manifest, keep_default_na=False).assign(split="test")
    for m in modalities:
        preprocess_modality(frame, manifest.parent, project / "pre" / m, modality=m, spec=specs[m], batch_size=4,
                            shard_size=8)
    test = load_split(frame, "test", LABELS, project / "pre", modalities)
    torch.manual_seed(0)
    norm = {"text": "none"}
    encoders = build_encoders(specs, modalities, [], norm)
    (project / "aligned").mkdir()
    write_aligned(project / "aligned", {s: test for s in SPLITS}, encoders, [], specs, dim=8, input_norm=norm,
                  batch_size=4)
    model, spec = initial_model(project / "aligned", LABELS, modalities, train_config(strategy="full", input_norm=norm))
    torch.nn.init.normal_(model.head.weight)  # distinct probabilities per row
    save_model(model, spec, project / "models" / "best")
    bundle_inputs(project / "aligned", project / "models" / "best")
    return project / "models" / "best"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the tokenizer checkpoint at `checkpoints/tok`, as the working directory."""
    project = tmp_path / "project"
    shutil.copytree(local_path("minilm"), project / "checkpoints" / "tok",
                    ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    monkeypatch.chdir(project)
    return project


def predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_reads_only_the_model_folder_from_any_working_directory(project, tmp_path, monkeypatch) -> None:
    model = build_model(project, {"text": TEXT})
    main(["--model", str(model), "--manifest", str(project / "dataset/manifest.csv"), "--out",
          str(tmp_path / "here.csv"), "--device", "cpu"])
    assert (model / "processors" / "text" / "tokenizer_config.json").is_file()
    # The model folder alone, elsewhere; the project (its tokenizer folder, align's folder) gone.
    shipped = shutil.copytree(model, tmp_path / "shipped" / "model")
    manifest = shutil.copy(project / "dataset/manifest.csv", tmp_path / "shipped" / "manifest.csv")
    shutil.rmtree(project)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    main(["--model", str(shipped), "--manifest", str(manifest), "--out", str(tmp_path / "there.csv"),
          "--device", "cpu"])
    here, there = predictions(tmp_path / "here.csv"), predictions(tmp_path / "there.csv")
    assert len(there) == 9 and all(r["error"] == "" and r["modalities_used"] == "text" for r in there)
    assert there == here


def test_a_modality_of_the_users_is_imported_from_the_module_the_model_records(project, tmp_path,
                                                                                monkeypatch) -> None:
    register_module("toy", TOY)
    model = build_model(project, {"text": TEXT, "toy": TOY_SPEC})
    assert json.loads((model / "inputs.json").read_text())["processing"]["toy"]["module"] == TOY
    monkeypatch.setattr(registry_module, "_PLUGINS", {})  # a new process: only the built-in modalities known
    main(["--model", str(model), "--manifest", str(project / "dataset/manifest.csv"), "--out",
          str(tmp_path / "p.csv"), "--device", "cpu"])
    rows = predictions(tmp_path / "p.csv")
    assert {r["modalities_used"] for r in rows} == {"text+toy"} and all(r["error"] == "" for r in rows)

    # The module is not installed where the model is used: refused, naming it and what to do.
    inputs = json.loads((model / "inputs.json").read_text())
    inputs["processing"]["toy"]["module"] = "no_such_package.toy_modality"
    (model / "inputs.json").write_text(json.dumps(inputs))
    monkeypatch.setattr(registry_module, "_PLUGINS", {})
    with pytest.raises(SystemExit, match=r"(?s)reads modality 'toy', defined by the module "
                                         r"'no_such_package\.toy_modality'.*Install the package"):
        main(["--model", str(model), "--manifest", str(project / "dataset/manifest.csv"), "--out",
              str(tmp_path / "q.csv"), "--device", "cpu"])

"""The whole pipeline, every stage through a real `dvc repro`, in a temporary copy of the repo (tiny params): the
test run's shared run (tests/integration/built.py), checked in a copy of it."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from flows.workspace import run
from multimodal.data.data_docs import external_in_site
from multimodal.pipeline.offline_html import external_references
from tests.integration.built import Built
from tests.integration.conftest import TINY_PARAMS

pytestmark = pytest.mark.integration

STAGES = {"demo", "ingest", "validate", "preprocess@image", "preprocess@audio", "preprocess@text", "baseline", "align", "tune",
          "evaluate", "compress", "report"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_pipeline_end_to_end_then_noop(built: Built, reproduced: Path) -> None:
    # 1. A full run produces every stage's outputs.
    assert built.stages_run() == STAGES
    project = reproduced

    manifest = (project / "data/raw/manifest.csv").read_text().splitlines()
    assert manifest[0] == "sample_id,label,group,image,audio,text,split" and len(manifest) == 121
    report = json.loads((project / "data/validated/report.json").read_text())
    assert report["success"] is True and report["warnings"] == []  # val and test speakers are never in train
    for modality in ("image", "audio", "text"):
        assert (project / f"data/preprocessed/{modality}/train-00000.safetensors").stat().st_size > 0
    assert (project / "data/aligned/embedder.safetensors").exists()
    assert (project / "data/aligned/features/test.safetensors").exists()
    align = json.loads((project / "metrics/align.json").read_text())
    assert 0.0 <= align["test/image_to_audio_recall@5"] <= 1.0

    best = project / "models/best"
    assert {"model.safetensors", "model.json", "best_config.yaml"} <= {p.name for p in best.iterdir()}
    assert {p.name for p in (project / "models/unimodal").iterdir()} == {"image", "audio", "text"}
    trials = (project / "metrics/tune_trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 2 and all(",ok," in row for row in trials[1:])

    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    test_rows = [row for row in csv.DictReader(manifest) if row["split"] == "test"]
    for modality in ("image", "audio", "text"):
        # Each model on the rows where its input exists; the fused model against it on those same rows.
        seen = sum(1 for row in test_rows if row[modality])
        for key in (f"unimodal_{modality}", f"fused_only_{modality}", f"baseline_{modality}"):
            model = metrics["models"][key]
            assert model["n"] == seen and 0.0 <= model["accuracy"] <= 1.0 and 0.0 <= model["macro_f1"] <= 1.0
            assert model["ci95"][0] <= model["accuracy"] <= model["ci95"][1]
            assert metrics["paired"][key]["n"] == seen
            assert metrics["all_rows_abstain_wrong"][key]["n"] == len(test_rows)
    tune = json.loads((project / "metrics/tune.json").read_text())
    val = {m: tune[f"unimodal/{m}/val_accuracy"] for m in ("image", "audio", "text")}
    assert metrics["best_unimodal"] == max(val, key=val.get)  # chosen on validation
    assert metrics["n_test"] == metrics["models"]["fused"]["n"] == metrics["fused_minus_baseline_n"] == len(test_rows)
    assert metrics["fused_beats_baseline"] == (metrics["fused_minus_baseline"] > 0)
    baseline = json.loads((project / "metrics/baseline.json").read_text())
    assert metrics["baseline_accuracy"] == pytest.approx(baseline["early_fusion"]["test_accuracy"])
    confusion = json.loads((project / "plots/evaluate/plots/sklearn/confusion_matrix.json").read_text())
    rows = next(iter(confusion.values())) if isinstance(confusion, dict) else confusion
    assert len(rows) == sum(1 for line in manifest[1:] if line.endswith(",test"))
    page = (project / "reports/index.html").read_text()
    assert "Model card" in page and "unimodal_audio" in page and "data:image/png;base64," in page
    assert external_references(page) == []
    assert external_in_site(project / "data/validation_docs") == {}

    # Calibration, robustness and efficiency beside the scores; the tables drawn by `dvc plots show`.
    assert all(0.0 <= model["ece"] <= 1.0 for model in metrics["models"].values())
    assert "corruption_skipped" not in metrics  # MiniLM, frozen, encodes the corrupted texts again
    assert set(metrics["fused_accuracy_without"]) == {"image", "audio", "text", "image+audio", "image+text",
                                                      "audio+text"}
    evaluate_dir = project / "plots/evaluate"
    curves = {p.stem: list(csv.DictReader(p.read_text().splitlines())) for p in (evaluate_dir / "corruption").iterdir()}
    assert set(curves) == {"image_noise", "image_blur", "image_occlusion", "audio_noise", "text_tokens"}
    for name, rows in curves.items():
        modality = name.split("_")[0]
        clean = metrics["paired"][f"unimodal_{modality}"]  # level 0: exactly the clean figures, on the same rows
        assert float(rows[0]["level"]) == 0.0 and int(rows[0]["n"]) == clean["n"]
        assert float(rows[0]["fused"]) == clean["fused_accuracy"] and float(rows[0]["unimodal"]) == clean["accuracy"]
    efficiency = json.loads((evaluate_dir / "efficiency.json").read_text())
    assert {r["batch_size"] for r in efficiency["models"]["fused"]["timing"]} == \
        set(TINY_PARAMS["evaluate", "efficiency"]["batch_sizes"])
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    drawn = {"plots/evaluate/corruption/audio_noise.csv", "plots/evaluate/reliability/fused.csv",
             "plots/evaluate/missing_modality.csv", "plots/evaluate/per_class/fused.csv"}
    assert not plots.get("errors") and drawn <= set(plots["data"])

    # 2. Nothing changed: nothing runs (in a copy of the run: DVC hashes the copied files again, finds them equal).
    second = run(["dvc", "repro"], project)
    assert stages_run(second.stdout) == set()
    assert "Data and pipelines are up to date" in second.stdout
    # 3. Experiments (a tune knob changed): test_use_model.py, over another copy of the same run.


@pytest.mark.slow
def test_same_params_and_data_give_the_same_metrics(reproduced: Path) -> None:
    project = reproduced
    first = (project / "metrics/evaluate.json").read_text()
    trials = (project / "metrics/tune_trials.csv").read_text()
    lock = (project / "dvc.lock").read_text()
    for stage in ("tune", "evaluate"):
        run(["dvc", "repro", "--force", "--single-item", stage], project)
    assert (project / "metrics/evaluate.json").read_text() == first
    assert (project / "metrics/tune_trials.csv").read_text() == trials
    # Bit-identical weights and tables: the re-run's output hashes equal the first one's.
    assert (project / "dvc.lock").read_text() == lock

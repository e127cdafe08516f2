"""The whole pipeline, every stage through a real `dvc repro`, in a temporary copy of the repo (tiny params): the
test run's shared run (tests/integration/built.py), checked in a copy of it."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.workspace import run
from multimodal.data.data_docs import external_in_site
from multimodal.pipeline.offline_html import external_references
from tests.integration.built import Built
from tests.integration.conftest import TINY_PARAMS

pytestmark = pytest.mark.integration

STAGES = {"demo", "ingest", "validate", "preprocess@image", "preprocess@audio", "preprocess@text", "baseline", "align", "tune",
          "ensemble", "evaluate", "compress", "report"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


TIMINGS = {"plots/evaluate/efficiency.json"}  # evaluate's efficiency report: latencies vary run to run


def locked_hashes(project: Path) -> dict[str, str]:
    """Every output's hash as dvc.lock records it, the timing reports left out."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for body in lock.values() for out in body.get("outs", [])
            if out["path"] not in TIMINGS}


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
    # Every saved model carries the temperature tune fitted on its validation rows; evaluate applies it.
    for folder in (best, *(project / "models/unimodal").iterdir()):
        fitted = json.loads((folder / "temperature.json").read_text())
        assert fitted["temperature"] > 0 and fitted["fitted_on"] == "val" and fitted["n"] > 0
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
    # The best single-modality model, deep or classical, chosen on validation (each on the val rows it sees).
    ensemble = json.loads((project / "ensemble/ensemble.json").read_text())
    val = {name: figures["accuracy"] for name, figures in ensemble["validation"]["members"].items()
           if name.startswith("unimodal_") or name in {f"baseline_{m}" for m in ("image", "audio", "text")}}
    assert len(val) == 6 and metrics["best_unimodal"] == max(val, key=val.get)
    # The ensemble: weights from validation, scored on test beside the single best, the default named.
    assert sum(m["weight"] for m in ensemble["members"]) == pytest.approx(1.0)
    # Every member by its folder (a classical one's saved by the baseline stage): predict can run the ensemble.
    assert all((project / "ensemble" / m["path"] / ("classical.json" if m["kind"] == "classical" else "model.json"))
               .exists() for m in ensemble["members"])
    assert {p.name for p in (project / "data/baseline/models").iterdir()} == {
        "baseline_image", "baseline_audio", "baseline_text", "baseline_early_fusion"}
    # The default decided on held-out validation rows (2-fold cross-fitting), the in-sample figures beside it.
    assert ensemble["validation"]["default_by"] == "cross_fitted" and set(ensemble["validation"]["in_sample"]) == {
        "ensemble", "single_best"}
    assert metrics["ensemble_accuracy_n"] == len(test_rows) and metrics["single_best"] == ensemble["single_best"]
    assert metrics["default_model"] == ensemble["default"] in {"ensemble", ensemble["single_best"]}
    assert metrics["ensemble_minus_single_best_ci95_lo"] <= metrics["ensemble_minus_single_best"] <= \
        metrics["ensemble_minus_single_best_ci95_hi"]
    assert metrics["n_test"] == metrics["models"]["fused"]["n"] == metrics["fused_minus_baseline_n"] == len(test_rows)
    # A claim holds only when its paired interval lies above 0 (multimodal/evaluation/claims.py).
    assert metrics["fused_beats_baseline"] == (metrics["fused_minus_baseline_ci95_lo"] > 0)
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
    assert metrics["fused_temperature"] == json.loads((best / "temperature.json").read_text())["temperature"]
    assert 0.0 <= metrics["fused_ece_calibrated"] <= 1.0
    assert (project / "plots/evaluate/reliability/fused_calibrated.csv").exists()
    explained = json.loads((project / "plots/evaluate/explanations/rows.json").read_text())
    assert len(explained) == TINY_PARAMS["evaluate", "explain"]["rows"] and "Why these predictions" in page
    assert {"image", "audio"} <= {m for row in explained for m in row["maps"]}  # the maps of the raw inputs
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


def test_ensemble_weights_do_not_move_when_the_test_labels_are_shuffled(reproduced: Path) -> None:
    """Selection reads validation rows only: the ensemble stage of the same run with every test label shuffled writes
    the same members, weights and validation figures."""
    project = reproduced
    before = json.loads((project / "ensemble/ensemble.json").read_text())
    manifest = project / "data/validated/manifest.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test = frame["split"] == "test"
    labels = frame.loc[test, "label"].to_numpy()
    frame.loc[test, "label"] = np.roll(labels, 1)  # each test row takes its neighbour's label
    assert (frame.loc[test, "label"].to_numpy() != labels).any()
    frame.to_csv(manifest, index=False)
    run([sys.executable, "-m", "stages.ensemble"], project)
    after = json.loads((project / "ensemble/ensemble.json").read_text())
    assert after == before


def test_evaluate_scores_the_single_best_when_validation_prefers_another_trial(reproduced: Path) -> None:
    """The ensemble's metric is not tune's: validation can prefer another top-k trial's model to the fused best as
    the single best (this machine's demo run did). evaluate then loads it from models/trials and scores it."""
    project = reproduced
    path = project / "ensemble/ensemble.json"
    spec = json.loads(path.read_text())
    other = f"trial_{sorted(d.name for d in (project / 'models/trials').iterdir())[0]}"
    spec["single_best"] = spec["default"] = other
    path.write_text(json.dumps(spec))
    run([sys.executable, "-m", "stages.evaluate"], project)
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert metrics["single_best"] == metrics["default_model"] == other
    assert metrics["models"][other]["n"] == metrics["n_test"]
    assert metrics["single_best_accuracy"] == metrics["models"][other]["accuracy"]
    assert metrics["ensemble_minus_single_best_n"] == metrics["n_test"]


@pytest.mark.slow
def test_same_params_and_data_give_the_same_metrics(reproduced: Path) -> None:
    project = reproduced
    first = (project / "metrics/evaluate.json").read_text()
    trials = (project / "metrics/tune_trials.csv").read_text()
    lock = locked_hashes(project)
    for stage in ("tune", "evaluate"):
        run(["dvc", "repro", "--force", "--single-item", stage], project)
    assert (project / "metrics/evaluate.json").read_text() == first
    assert (project / "metrics/tune_trials.csv").read_text() == trials
    # Bit-identical weights and tables: the re-run's output hashes equal the first one's, but for evaluate's
    # efficiency report (timings, by design a cached report, not a metric).
    assert locked_hashes(project) == lock

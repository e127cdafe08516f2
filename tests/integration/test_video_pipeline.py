"""The demo with its opt-in video: moving-digit clips written by the demo stage, validated from their headers,
decoded with PyAV, encoded per frame and fused with text, through a real `dvc repro` (tiny params)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flows.workspace import copy_project, run

# Slow (opt-in: `-m slow`): video is an opt-in modality; its decoding, checks and encoder have unit tests.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_video_runs_the_tiny_pipeline(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", {
        ("demo", "n_samples"): 120,
        ("demo", "modalities"): ["text", "video"],
        ("preprocess", "modalities"): ["text", "video"],
        ("preprocess", "batch_size"): 64,
        ("align", "epochs"): 1,
        ("tune", "num_samples"): 1,
        ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
    })
    run(["dvc", "repro", "evaluate"], project)

    rows = list(csv.DictReader((project / "data/raw/manifest.csv").open()))
    assert list(rows[0]) == ["sample_id", "label", "group", "text", "video", "split"]
    clips = [row["video"] for row in rows if row["video"]]
    assert clips and all(c.endswith(".gif") for c in clips)
    report = json.loads((project / "data/validated/report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["success"] and {"video_decodes", "video_frames", "video_fps"} <= set(checks)
    profile = list(csv.DictReader((project / "data/validated/profile.csv").open()))
    assert {r["video_frames"] for r in profile if r["video_present"] == "True"} == {"16"}

    spec = json.loads((project / "models/best/model.json").read_text())
    assert set(spec["modalities"]) == {"text", "video"}
    assert spec["encoders"]["video"]["hf_config"]["model_type"] == "per_frame"
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert metrics["models"]["unimodal_video"]["n"] == sum(1 for r in rows if r["split"] == "test" and r["video"])
    assert {"baseline_video", "fused"} <= set(metrics["models"])

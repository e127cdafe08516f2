"""The offline report from a real validation of a hostile manifest: self-contained, escaped, complete."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from multimodal.pipeline.offline_html import external_references
from multimodal.reporting.report import ReportInputs, build_report, json_tables
from tests.report_run import LABELS, build_run
from tests.unit.conftest import REPO, repo_params
from tests.unit.hostile import HOSTILE, Tags, assert_defused


def inputs(files: dict[str, Path], **overrides) -> ReportInputs:
    options = repo_params().report
    values = dict(validated=files["validated"], metrics=files["metrics"], plots=files["plots"],
                  best_config=files["best_config"], params={"base.seed": 42, "tune": {"metric": "val_accuracy"}},
                  title=options.title, intended_use=options.intended_use, limitations=options.limitations,
                  max_rows=options.max_rows, dataset="data/demo", selection="val_accuracy", selection_mode="max",
                  resamples=200)
    return ReportInputs(**{**values, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return build_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def page(run) -> str:
    return build_report(inputs(run))


def tags(page: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_report_is_one_self_contained_file_without_script(page):
    assert external_references(page) == []
    found = tags(page)
    assert not [t for t, _ in found if t in ("script", "iframe", "object", "embed", "link")]
    csp = next(a["content"] for t, a in found if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp  # a browser refuses any request besides
    images = [a["src"] for t, a in found if t == "img"]
    assert images and all(src.startswith("data:image/") for src in images)


def test_manifest_content_is_shown_as_text_never_as_markup(page):
    text = assert_defused(page, "report")
    shown = text.count(HOSTILE)
    # Classes (model card), the quarantined rows' sample id and reasons, the hostile JSON key of a new block.
    assert shown >= 4, shown
    assert f"bad-split{HOSTILE}" in text  # the quarantined row's sample id, verbatim
    assert not [a for t, a in tags(page) if t == "img" and "evil" in a.get("src", "")]  # the <img> stayed text


def test_report_has_every_section_with_figures(page):
    text = assert_defused(page, "report")
    for title in ("Summary", "Model card", "Intended use", "Compared with", "Limits", "Metrics",
                  "Confusion matrix", "Validation", "Tuning", "Other results", "Parameters"):
        assert title in text, title
    assert repo_params().report.intended_use in text
    assert "Measured on the test split only" in text and "chance is 50.0%" in text
    assert "unimodal_audio" in text and "baseline_early_fusion" in text  # compared with, with figures
    assert "fused minus model" in text and "95% interval" in text
    assert "The ensemble beats the single best model (fused, chosen on validation): " in text
    assert ("The single best (fused) stays the default model: the ensemble does not beat it on validation rows its "
            "weights were not chosen on") in text
    # The summary's claims, each with its verdict and paired interval (multimodal/evaluation/claims.py).
    assert re.search(r"Fusion helps \(the fused model beats the best single-modality model, \w+, chosen on "
                     r"validation\): (shown|not shown|worse) \(", text)
    assert re.search(r"beats the classical baseline \(baseline_early_fusion\): (shown|not shown|worse) \([+-]", text)
    pngs = [a["src"] for t, a in tags(page) if t == "img" and a["src"].startswith("data:image/png")]
    assert len(pngs) >= 3  # accuracies, paired differences, confusion matrix


def test_calibration_and_explained_rows_are_drawn_from_what_evaluate_wrote(page):
    text = assert_defused(page, "report")
    for title in ("Calibration", "ECE as trained", "ECE calibrated", "Why these predictions",
                  "contribution is the predicted class", "attributions sum to +0.410"):
        assert title in text, title
    assert "s0: cat predicted as cat (90.0%, right)" in text and "predicted as cat (65.0%, WRONG)" in text
    assert f"text: {HOSTILE} 1" in text  # a text cell, as text
    alts = [a.get("alt") for t, a in tags(page) if t == "img"]
    assert "reliability diagram of the fused model" in alts
    assert alts.count("explanation of s0") == alts.count("explanation of s1") == 1
    assert "rows.json" not in text  # drawn by its section, not again among the other results


def test_files_no_section_knows_are_rendered_generically(page):
    text = assert_defused(page, "report")
    assert "calibration" in text and "ece" in text  # a new evaluate.json block
    assert "robustness.json" in text and "level" in text  # a new metrics file
    svg = [a["src"] for t, a in tags(page) if t == "img" and a["src"].startswith("data:image/svg+xml")]
    assert len(svg) == 1  # an image under plots/, inside <img>: its script never runs


def test_json_tables_flatten_nested_blocks():
    tables = json_tables({"a": 1, "per_class": {"x": {"precision": 0.5, "recall": 1.0}, "y": {"precision": 1}}},
                         "evaluate", max_rows=1)
    assert tables[0].columns == ["key", "value"] and tables[0].rows == [["a", 1]]
    assert tables[1].columns == ["name", "precision", "recall"] and tables[1].rows == [["x", 0.5, 1.0]]
    assert tables[1].more == 1  # max_rows kept one row


def test_stage_renders_declared_params_only(run, tmp_path, monkeypatch):
    """The real entry point on a copy of the repo's params with paths into the run: the report shows the params
    dvc.yaml declares for it (reading any other key would raise UndeclaredParam)."""
    from stages.report import main

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = run["validated"].parent
    params["base"]["paths"].update(validated=str(run["validated"]), metrics=str(run["metrics"]),
                                   plots=str(run["plots"]), models=str(base / "models"),
                                   report=str(tmp_path / "out" / "report.html"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    main()
    page = (tmp_path / "out" / "report.html").read_text()
    text = assert_defused(page, "stage report")
    assert "on_invalid:" in text and "bootstrap:" in text  # the validate and evaluate sections
    assert not re.search(r"^demo:", text, re.MULTILINE)  # not declared for the report: not shown
    assert all(label in text for label in LABELS)


def test_compressed_variants_get_their_front_and_table(run, tmp_path):
    plots = tmp_path / "plots"
    shutil.copytree(run["plots"], plots)
    rows = [{"variant": "original", "accuracy": 0.9, "accuracy_ci95_lo": 0.87, "accuracy_ci95_hi": 0.93,
             "latency_ms": 40.0, "size_ratio": 1.0, "cpu_throughput_ratio": 1.0, "cpu_b64_latency_ms": 600.0},
            {"variant": f"int8{HOSTILE}", "accuracy": 0.895, "accuracy_ci95_lo": 0.86, "accuracy_ci95_hi": 0.92,
             "latency_ms": 41.0, "minus_original": -0.005, "minus_original_ci95_lo": -0.01,
             "minus_original_ci95_hi": 0.0, "within_1_point": True, "size_ratio": 0.26, "cpu_throughput_ratio": 0.98}]
    (plots / "compress").mkdir()
    (plots / "compress" / "front.json").write_text(json.dumps(rows))
    text = assert_defused(build_report(inputs({**run, "plots": plots})), "report")
    section = text[text.index("Variants of the chosen model"):text.rindex("Other results")]
    assert f"int8{HOSTILE}" in section and "0.26" in section and "within_1_point" in section
    assert "cpu_b64_latency_ms" not in section  # every timing stays in the file; the table shows the ratios
    assert "compress/front.json" not in text[text.rindex("Other results"):]  # shown once, in its own section

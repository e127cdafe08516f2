"""evaluate: models scored on the rows they see, best unimodal chosen on validation, the baseline warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from multimodal.evaluation.evaluate import (
    ensemble_headline,
    fair_report,
    load_readers,
    reader_probabilities,
    warn_if_baseline_wins,
    with_details,
)
from multimodal.evaluation.scoring import ABSTAIN, top_label
from multimodal.models.model import ModelSpec, build_model, save_model
from multimodal.models.temperature import TEMPERATURE
from multimodal.training.train import predict
from tests.unit.conftest import knobs, synthetic_split

pytestmark = pytest.mark.usefixtures("single_thread")

A = ABSTAIN
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
PREDS = {
    "fused": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1]),  # wrong on row 9
    # On test, audio looks best (right on every row it sees); validation prefers image.
    "unimodal_image": np.array([0, 1, 0, 0, A, 2, 1, 1, 2, A]),  # sees 8 rows, right on 6
    "unimodal_audio": np.array([A, A, 2, 0, 1, 2, 0, A, A, A]),  # sees 5 rows, right on 5
}
VAL = {"unimodal_image": 0.8, "unimodal_audio": 0.6}


def test_best_unimodal_comes_from_validation_and_is_compared_on_the_rows_both_see():
    report = fair_report(Y, PREDS, VAL, 500, seed=0)
    assert report["best_unimodal"] == "unimodal_image"  # not audio, which test would pick
    assert report["models"]["unimodal_image"]["n"] == 8
    assert report["models"]["unimodal_audio"] == {**report["models"]["unimodal_audio"], "accuracy": 1.0, "n": 5}
    # Rows 0-3, 5-8: fused 8/8, image 6/8.
    assert report["fused_minus_best_unimodal_n"] == 8
    assert report["fused_minus_best_unimodal"] == pytest.approx(8 / 8 - 6 / 8)
    assert report["fused_minus_best_unimodal_ci95_lo"] <= 0.25 <= report["fused_minus_best_unimodal_ci95_hi"]
    assert report["fused_accuracy"] == pytest.approx(0.9) and report["n_test"] == report["fused_accuracy_n"] == 10
    # Headline first, scalars only (what `dvc exp show` displays); details nested after.
    headline = list(report)[: list(report).index("models")]
    assert headline[0] == "fused_accuracy" and all(not isinstance(report[k], (list, dict)) for k in headline)
    # Validation the other way round picks the other model.
    assert fair_report(Y, PREDS, {"unimodal_image": 0.5, "unimodal_audio": 0.6}, 500, seed=0)["best_unimodal"] == \
        "unimodal_audio"


def test_the_best_single_modality_model_may_be_a_classical_one():
    """Deep and classical single-modality models compete on validation; test never chooses."""
    classical = {**PREDS, "baseline_image": np.array([0, 1, 2, 1, A, 1, 0, 0, 2, A])}  # right on 5 of its 8
    report = fair_report(Y, classical, {**VAL, "baseline_image": 0.85}, 500, seed=0)
    assert report["best_unimodal"] == "baseline_image"
    assert report["fused_minus_best_unimodal"] == pytest.approx(8 / 8 - 5 / 8)
    assert report["fused_minus_best_unimodal_n"] == 8


def test_the_ensemble_is_reported_beside_the_single_best_with_a_paired_difference():
    preds = {**PREDS, "ensemble": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])}  # right on every row
    report = ensemble_headline(fair_report(Y, preds, VAL, 500, seed=0), Y, preds, "fused", "ensemble", 500, seed=0)
    assert report["ensemble_accuracy"] == 1.0 and report["single_best"] == "fused"
    assert report["ensemble_minus_single_best"] == pytest.approx(0.1) and report["ensemble_minus_single_best_n"] == 10
    assert report["ensemble_minus_single_best_ci95_lo"] <= 0.1 <= report["ensemble_minus_single_best_ci95_hi"]
    assert report["default_model"] == "ensemble"
    headline = list(report)[: list(report).index("models")]  # headline keys, before the details
    assert {"ensemble_accuracy", "single_best", "ensemble_minus_single_best", "default_model"} <= set(headline)


def test_report_is_deterministic_for_a_seed():
    assert fair_report(Y, PREDS, VAL, 300, seed=7) == fair_report(Y, PREDS, VAL, 300, seed=7)
    assert fair_report(Y, PREDS, VAL, 300, seed=8) != fair_report(Y, PREDS, VAL, 300, seed=7)  # some interval moves


def _rows(fused_right: int, other_right: int, both: int, n: int) -> tuple[np.ndarray, dict]:
    """Labels and predictions where the fused model alone is right on `fused_right` rows, the baseline alone on
    `other_right`, both on `both`, neither on the rest."""
    y = np.zeros(n, dtype=np.int64)
    fused, other = np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    fused[: fused_right + both] = 0
    other[fused_right: fused_right + both + other_right] = 0
    return y, {"fused": fused, "baseline_early_fusion": other}


@pytest.mark.parametrize("fused_right, other_right, verdict", [(2, 1, "not shown"), (40, 2, "shown"),
                                                               (2, 40, "worse")])
def test_beating_the_baseline_is_claimed_only_when_the_interval_is_above_zero(fused_right, other_right, verdict,
                                                                               caplog):
    y, preds = _rows(fused_right, other_right, both=100, n=200)
    report = fair_report(y, preds, {}, 500, seed=0)
    low, high = report["fused_minus_baseline_ci95_lo"], report["fused_minus_baseline_ci95_hi"]
    assert report["fused_minus_baseline"] > 0 or verdict == "worse"
    assert report["fused_beats_baseline"] is (low > 0) is (verdict == "shown")
    assert report["fused_beats_baseline_verdict"] == verdict
    sentence = report["claims"]["fused_beats_baseline"]["sentence"]
    assert f": {verdict} (" in sentence and f"[{100 * low:+.1f}, {100 * high:+.1f}]" in sentence
    assert report["baseline_accuracy"] == pytest.approx((preds["baseline_early_fusion"] == y).mean())
    with caplog.at_level(logging.WARNING, logger="multimodal.evaluation.evaluate"):
        warn_if_baseline_wins(report)
    loud = [r for r in caplog.records if r.levelno == logging.WARNING and "NOT shown to beat" in r.getMessage()]
    assert bool(loud) is (verdict != "shown")


def test_fusion_helps_is_the_claim_against_the_best_single_modality():
    report = fair_report(Y, PREDS, VAL, 500, seed=0)
    helps = report["claims"]["fusion_helps"]
    # +25 points on 8 rows: positive, yet the interval holds 0.
    assert helps["difference"] == report["fused_minus_best_unimodal"] > 0
    assert helps["ci95"] == [report["fused_minus_best_unimodal_ci95_lo"], report["fused_minus_best_unimodal_ci95_hi"]]
    assert report["fusion_helps"] is False and report["fusion_helps_verdict"] == "not shown"
    assert "best single-modality model, unimodal_image, chosen on validation" in helps["sentence"]


def test_deep_models_abstain_on_rows_lacking_their_modality(tmp_path):
    """Saved fused and unimodal models, read from cached features as `evaluate` does: only rows with an input count."""
    test = synthetic_split(40, missing=0.3, seed=3)
    aligned, models = tmp_path / "aligned", tmp_path / "models"
    (aligned / "features").mkdir(parents=True)
    save_file({m: test.inputs[m]["features"] for m in test.modalities}, str(aligned / "features" / "test.safetensors"),
              metadata={"sample_ids": json.dumps(test.sample_ids)})
    spec = ModelSpec(["a", "b"], {"a": {"features": 8}, "b": {"features": 8}}, ["x", "y", "z"], dim=8,
                     fusion="concat", dropout=0.1, fusion_knobs=knobs("concat"), input_norm={})
    torch.manual_seed(0)
    fused = build_model(spec)
    save_model(fused, spec, models / "best")
    save_model(build_model(spec.restricted(["a"])), spec.restricted(["a"]), models / "unimodal" / "a")
    probs = reader_probabilities(load_readers(models, test, aligned, torch.device("cpu")), 16, torch.device("cpu"))
    preds = {name: top_label(p) for name, p in probs.items()}  # as stage evaluate decides

    has_a = test.masks["a"].numpy()
    assert 0 < has_a.sum() < len(test)
    assert ((preds["unimodal_a"] == ABSTAIN) == ~has_a).all()
    assert ((preds["fused_only_a"] == ABSTAIN) == ~has_a).all()
    assert (preds["fused"] != ABSTAIN).all()  # every row has a or b
    assert "unimodal_b" not in preds  # no saved model: nothing invented
    # Where it has its input, the ablation is the fused model with `b` masked out.
    rows = torch.nonzero(test.masks["a"]).flatten()
    shown_a = test.take(rows)
    shown_a.masks["b"] = torch.zeros_like(shown_a.masks["b"])
    expected = predict(fused, shown_a, 16, torch.device("cpu")).argmax(1).numpy()
    assert np.array_equal(preds["fused_only_a"][has_a], expected)

    # A saved temperature: the calibrated probabilities are softmax(logits / T), with the same argmax.
    (models / "best" / TEMPERATURE).write_text(json.dumps({"temperature": 3.0}))
    readers = load_readers(models, test, aligned, torch.device("cpu"))
    calibrated = reader_probabilities(readers, 16, torch.device("cpu"), calibrated=True)
    fused_data = readers["fused"].data
    assert np.allclose(calibrated["fused"], predict(fused, fused_data, 16, torch.device("cpu"), temperature=3.0))
    assert np.array_equal(top_label(calibrated["fused"]), preds["fused"])
    assert np.array_equal(top_label(calibrated["fused_only_a"]), preds["fused_only_a"])
    assert not np.allclose(calibrated["fused"], probs["fused"])
    assert np.array_equal(calibrated["unimodal_a"], probs["unimodal_a"], equal_nan=True)  # no file: T = 1


def test_details_add_calibration_and_missing_modality_figures_after_the_headline():
    report = fair_report(Y, PREDS, VAL, 300, seed=0)
    calibration = {"fused": {"ece": 0.05}, "unimodal_image": {"ece": 0.2}}
    missing = [{"removed": "none", "accuracy": 0.9}, {"removed": "audio", "accuracy": 0.6}]
    out = with_details(report, calibration, missing, {"text": "why"})
    keys = list(out)
    assert keys.index("fused_ece") == keys.index("models") - 1  # the last headline key
    assert out["fused_ece"] == 0.05 and out["models"]["unimodal_image"]["ece"] == 0.2
    assert "ece" not in out["models"]["unimodal_audio"]  # no probabilities, no ECE
    assert out["fused_accuracy_without"] == {"audio": 0.6} and out["corruption_skipped"] == {"text": "why"}
    assert "ece" not in report["models"]["fused"]  # the input is left as it was
    assert "corruption_skipped" not in with_details(report, calibration, missing, {})
    after = {"fused": {"ece": 0.03, "temperature": 1.7}}
    out = with_details(report, calibration, missing, {}, after)
    keys = list(out)
    assert keys[keys.index("fused_ece"):keys.index("models")] == ["fused_ece", "fused_ece_calibrated",
                                                                  "fused_temperature"]
    assert out["models"]["fused"] == {**out["models"]["fused"], "ece": 0.05, "ece_calibrated": 0.03,
                                      "temperature": 1.7}
    assert "temperature" not in out["models"]["unimodal_image"]

"""Expected calibration error and the reliability diagram on prediction sets small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from multimodal.evaluation.calibration import bin_index, reliability
from multimodal.evaluation.scoring import ABSTAIN, top_label

NAN = [np.nan] * 3
Y = np.array([0, 0, 1, 1, 2])
# Confidences .9 (right), .6 (right), .7 (wrong: says 0, is 1), .85 (right); the last row is not seen.
PROBS = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], NAN])


def test_ece_and_bins_by_hand():
    pred = top_label(PROBS)
    assert pred.tolist() == [0, 0, 0, 1, ABSTAIN]
    got = reliability(Y, pred, PROBS, bins=5)  # edges 0 .2 .4 .6 .8 1, right-closed: .6 falls in (.4, .6]
    assert got["n"] == 4
    assert [(b["bin_lo"], b["bin_hi"], b["count"]) for b in got["bins"]] == [(0.4, 0.6, 1), (0.6, 0.8, 1),
                                                                              (0.8, 1.0, 2)]
    assert [b["accuracy"] for b in got["bins"]] == [1.0, 0.0, 1.0]
    assert [b["confidence"] for b in got["bins"]] == pytest.approx([0.6, 0.7, 0.875])
    # (1 * |1 - .6| + 1 * |0 - .7| + 2 * |1 - .875|) / 4
    assert got["ece"] == pytest.approx((0.4 + 0.7 + 0.25) / 4)


def test_bins_are_scikit_learns():
    gen = np.random.default_rng(0)
    confidence = np.concatenate([gen.uniform(0.3, 1.0, 200), np.linspace(0, 1, 16)])  # edges included
    correct = gen.uniform(size=len(confidence)) < confidence
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=15, pos_label=True)
    ids = bin_index(confidence, 15)
    filled = np.unique(ids)
    assert np.allclose([confidence[ids == b].mean() for b in filled], mean_confidence)
    assert np.allclose([correct[ids == b].mean() for b in filled], accuracy)


def test_calibrated_and_overconfident_models():
    y = np.zeros(8, dtype=np.int64)
    # 3 of 4 right at confidence .75 in one bin, twice: calibrated.
    probs = np.tile([[0.75, 0.25]], (8, 1))
    pred = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    probs[pred == 1] = [0.25, 0.75]
    assert reliability(y, pred, probs, bins=15)["ece"] == pytest.approx(0.0)
    # Half right at confidence .99: ECE .49.
    sure = np.tile([[0.99, 0.01]], (8, 1))
    wrong = np.arange(8) % 2 == 1
    sure[wrong] = [0.01, 0.99]
    assert reliability(y, top_label(sure), sure, bins=15)["ece"] == pytest.approx(0.49)


def test_a_model_that_sees_no_row_has_no_ece():
    assert reliability(Y, np.full(5, ABSTAIN), np.full((5, 3), np.nan), bins=15) == {"ece": None, "n": 0, "bins": []}

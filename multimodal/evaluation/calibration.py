"""Top-label calibration: expected calibration error (ECE) and the reliability diagram behind it.

A model's confidence on a row is its highest class probability, and the row counts as correct when the predicted
class is the label. Confidences fall into `bins` equal-width bins of [0, 1] (right-closed, as scikit-learn's
`calibration_curve` bins them); per non-empty bin the diagram plots the accuracy against the mean confidence, and

    ECE = sum over bins of (rows in bin / rows) * |accuracy in bin - mean confidence in bin|

(Guo et al. 2017, https://arxiv.org/abs/1706.04599). 0 is perfect calibration; an overconfident model sits
below the diagonal. Only rows the model saw count (a unimodal model's rows with its modality).
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve

from multimodal.evaluation.scoring import ABSTAIN


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence, by `calibration_curve`'s own rule (a value on an edge goes to the lower bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], confidence)


def reliability(y: np.ndarray, pred: np.ndarray, probs: np.ndarray, bins: int) -> dict:
    """ECE and the reliability diagram's bins of one model (`pred`: class or ABSTAIN; `probs`: (N, C)).

    `pred` is the model's own decision (for the classical baseline, LogisticRegression.predict), the confidence
    the probability it gives its highest class. Returns `{"ece", "n", "bins": [{bin_lo, bin_hi, confidence,
    accuracy, count}, ...]}` with the non-empty bins only; `ece` is None when the model saw no row.
    """
    seen = pred != ABSTAIN
    if not seen.any():
        return {"ece": None, "n": 0, "bins": []}
    correct = pred[seen] == y[seen]
    confidence = np.clip(probs[seen].max(axis=1).astype(np.float64), 0.0, 1.0)  # float32 softmax may pass 1
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform",
                                                  pos_label=True)
    counts = np.bincount(bin_index(confidence, bins), minlength=bins)
    filled = np.flatnonzero(counts)
    ece = float(np.sum(counts[filled] / len(correct) * np.abs(accuracy - mean_confidence)))
    rows = [{"bin_lo": float(b / bins), "bin_hi": float((b + 1) / bins), "confidence": float(c),
             "accuracy": float(a), "count": int(counts[b])}
            for b, c, a in zip(filled, mean_confidence, accuracy)]
    return {"ece": ece, "n": int(len(correct)), "bins": rows}

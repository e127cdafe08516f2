"""Fair scoring of predictions: each model on the rows it can see, paired differences, bootstrap intervals.

A prediction vector holds a class index per test row, or `ABSTAIN` (-1) where the model had no input (a unimodal
model on a row lacking its modality). Intervals are percentile bootstrap intervals over test rows. Accuracy and
paired accuracy differences depend only on how many resampled rows fall in each (correct, correct) cell, so
resampling those cell counts from a multinomial is the row bootstrap, exactly, in O(resamples) memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

ABSTAIN = -1  # a model's prediction on a row it has no input for
LEVEL = 0.95


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def top_label(probs: np.ndarray) -> np.ndarray:
    """Class of highest probability per row of (N, C) `probs`; ABSTAIN on rows without probabilities (NaN)."""
    seen = ~np.isnan(probs).any(axis=1)
    return np.where(seen, np.nan_to_num(probs, nan=0.0).argmax(axis=1), ABSTAIN).astype(np.int64)


def per_class_scores(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class, on the rows the model saw (pred != ABSTAIN).

    A class the model never predicts has precision 0 (not undefined), one absent from these rows recall 0.
    """
    seen = pred != ABSTAIN
    precision, recall, f1, support = precision_recall_fscore_support(
        y[seen], pred[seen], labels=list(range(len(labels))), zero_division=0)
    return [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)]


def rng_for(seed: int, name: str) -> np.random.Generator:
    """One stream per named figure: adding a model to the report leaves every other interval unchanged."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _interval(samples: np.ndarray) -> list[float]:
    low, high = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(low), float(high)]


def accuracy_interval(correct: np.ndarray, resamples: int, rng: np.random.Generator) -> list[float] | None:
    """Bootstrap 95% interval of the mean of a boolean vector (accuracy over these rows); None without rows."""
    n = len(correct)
    if n == 0:
        return None
    hits = rng.binomial(n, correct.mean(), size=resamples)  # correct rows among n drawn with replacement
    return _interval(hits / n)


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    """Accuracy of A minus accuracy of B on the same rows (`a`, `b`: correct per row), with a paired interval.

    Rows are resampled as pairs: only rows where exactly one model is right move the difference.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0:
        return {"difference": None, "ci95": None, "n": 0}  # None, not NaN: metrics files stay strict JSON
    cells = np.array([(a & ~b).sum(), (~a & b).sum(), (a == b).sum()])
    counts = rng.multinomial(n, cells / n, size=resamples)
    return {"difference": float((cells[0] - cells[1]) / n), "ci95": _interval((counts[:, 0] - counts[:, 1]) / n),
            "n": n}


def model_scores(name: str, y: np.ndarray, pred: np.ndarray, resamples: int, seed: int) -> dict:
    """Accuracy, macro-F1, `n` and accuracy interval on the rows the model saw (pred != ABSTAIN)."""
    seen = pred != ABSTAIN
    out = {**scores(y[seen], pred[seen]), "n": int(seen.sum())} if seen.any() else {"accuracy": None, "n": 0}
    out["ci95"] = accuracy_interval(pred[seen] == y[seen], resamples, rng_for(seed, name))
    return out


def best_by_validation(val_accuracy: Mapping[str, float]) -> str | None:
    """The model of highest validation accuracy (first on ties); test never enters the choice."""
    return max(val_accuracy, key=val_accuracy.__getitem__) if val_accuracy else None


def compare(reference: str, y: np.ndarray, preds: Mapping[str, np.ndarray], resamples: int, seed: int) -> dict:
    """`reference` (the fused model) against every other model, two ways.

    - `paired`: on the rows both models see, `reference` minus the other, with its paired interval.
    - `all_rows_abstain_wrong`: on every row the reference sees, a row the other model has no input for counts as
      wrong for it: what a user relying on that model alone would get.
    """
    ref = preds[reference]
    paired, abstain = {}, {}
    for name, pred in preds.items():
        if name == reference:
            continue
        both = (ref != ABSTAIN) & (pred != ABSTAIN)
        ref_right, other_right = ref[both] == y[both], pred[both] == y[both]
        paired[name] = {"accuracy": float(other_right.mean()) if both.any() else None,
                        f"{reference}_accuracy": float(ref_right.mean()) if both.any() else None,
                        **_named(reference, paired_difference(ref_right, other_right, resamples,
                                                              rng_for(seed, f"paired/{name}")))}
        rows = ref != ABSTAIN
        if (pred[rows] == ABSTAIN).any():
            other_right = pred[rows] == y[rows]  # ABSTAIN never equals a label: counted wrong
            abstain[name] = {"accuracy": float(other_right.mean()),
                             **_named(reference, paired_difference(ref[rows] == y[rows], other_right, resamples,
                                                                   rng_for(seed, f"abstain/{name}")))}
    return {"paired": paired, "all_rows_abstain_wrong": abstain}


def _named(reference: str, difference: dict) -> dict:
    """`paired_difference`'s keys, saying what is subtracted: `fused_minus`, `fused_minus_ci95`, `n`."""
    return {"n": difference["n"], f"{reference}_minus": difference["difference"],
            f"{reference}_minus_ci95": difference["ci95"]}

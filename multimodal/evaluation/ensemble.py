"""Ensemble selection (Caruana et al., ICML 2004, as AutoGluon's `greedy_ensemble/ensemble_selection.py`).

Greedy forward selection with replacement: start empty; each round add the member whose addition gives the best
validation score of the running weighted average of class probabilities; a member may be added again (its weight is
its count / rounds). As AutoGluon does (`use_best`), the selection keeps the prefix of rounds with the best score.

Missing modalities: a member's probabilities are NaN on the rows it cannot see (a unimodal model on a row lacking its
modality). On each row the average runs over the members that see it, weights renormalised; a row no chosen member
sees is scored as a uniform guess (log-likelihood) or as wrong (accuracy), so every candidate is judged on the same
rows. Only validation rows enter: the functions here take one split's probabilities and labels.

The saved form (`multimodal.models.ensemble`, `ensemble.json`) names members by reference, never copies them: a deep
model by its folder relative to the ensemble's, a classical baseline by its name in the baseline stage's files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from multimodal.models.ensemble import EnsembleSpec, Member, combine

METRICS = ("log_likelihood", "accuracy")  # what the greedy rounds maximise (params `ensemble.metric`)
EPS = 1e-15  # probability floor of the log-likelihood (a member saying 0 for the true class is not -inf)


def score(probs: np.ndarray, y: np.ndarray, metric: str) -> float:
    """Mean log-likelihood of the true class, or accuracy, over every row of `probs`; a NaN row (nobody sees it)
    counts as a uniform guess, or as wrong."""
    n_classes = probs.shape[1]
    seen = ~np.isnan(probs).any(axis=1)
    if metric == "accuracy":
        right = np.zeros(len(y), dtype=bool)
        right[seen] = probs[seen].argmax(axis=1) == y[seen]
        return float(right.mean())
    if metric == "log_likelihood":
        p = np.full(len(y), 1.0 / n_classes)
        p[seen] = probs[seen, y[seen]]
        return float(np.log(np.clip(p, EPS, 1.0)).mean())
    raise ValueError(f"ensemble metric {metric!r}: expected one of {METRICS}")


@dataclass(frozen=True)
class Selection:
    """What `select` chose: each member's count (0 for the unchosen; in the input order), the validation score after
    each kept round, and the metric."""

    counts: dict[str, int]
    trajectory: list[float]
    metric: str

    @property
    def weights(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {name: count / total for name, count in self.counts.items() if count}


def select(val_probs: Mapping[str, np.ndarray], y: np.ndarray, metric: str, rounds: int) -> Selection:
    """Greedy forward selection with replacement over `val_probs` ({member: (N, C), NaN rows unseen}) against the
    validation labels `y`, for `rounds` rounds; the best prefix is kept. Ties go to the member listed first."""
    if metric not in METRICS:
        raise ValueError(f"ensemble metric {metric!r}: expected one of {METRICS}")
    if not val_probs:
        raise ValueError("ensemble selection needs at least one member")
    names = list(val_probs)
    filled = {n: np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0) for n, p in val_probs.items()}
    seen = {n: (~np.isnan(np.asarray(p)).any(axis=1)).astype(np.float64) for n, p in val_probs.items()}
    total = np.zeros_like(next(iter(filled.values())))  # running sum of the chosen members' probabilities
    norm = np.zeros(len(y))  # running count of chosen members seeing each row
    chosen: list[str] = []
    trajectory: list[float] = []
    for _ in range(rounds):
        best_name, best_score = None, -np.inf
        for name in names:
            n = norm + seen[name]
            with np.errstate(invalid="ignore", divide="ignore"):
                probs = np.where(n[:, None] > 0, (total + filled[name]) / n[:, None], np.nan)
            value = score(probs, y, metric)
            if value > best_score:  # strict: the first listed wins a tie
                best_name, best_score = name, value
        total, norm = total + filled[best_name], norm + seen[best_name]
        chosen.append(best_name)
        trajectory.append(best_score)
    keep = int(np.argmax(trajectory)) + 1  # the first best prefix
    counts = {name: chosen[:keep].count(name) for name in names}
    return Selection(counts, trajectory[:keep], metric)


def member_figures(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A model's validation figures: accuracy on the rows it sees (`n` of them: how a single-modality model is
    judged) and both metrics on every row (`score`: how the selection judges it)."""
    seen = ~np.isnan(probs).any(axis=1)
    own = float((probs[seen].argmax(axis=1) == y[seen]).mean()) if seen.any() else None
    return {"accuracy": own, "n": int(seen.sum()), "all_rows_accuracy": score(probs, y, "accuracy"),
            "all_rows_log_likelihood": score(probs, y, "log_likelihood")}


def choose(val_probs: Mapping[str, np.ndarray], modalities: Mapping[str, list[str]], paths: Mapping[str, str | None],
           y: np.ndarray, labels: list[str], metric: str, rounds: int) -> EnsembleSpec:
    """The ensemble of `val_probs`' members ({name: (N, C) on validation}, the first the fused best model), and
    whether it is the default: only when its validation score beats the single best full-coverage member's (one
    that sees every row the first member sees). `paths`: a deep member's folder relative to the ensemble's, None
    for a classical one."""
    selection = select(val_probs, y, metric, rounds)
    figures = {name: member_figures(p, y) for name, p in val_probs.items()}
    first = next(iter(val_probs))
    full = [n for n in val_probs if figures[n]["n"] >= figures[first]["n"]]
    key = f"all_rows_{metric}"
    single_best = max(full, key=lambda n: figures[n][key])  # the first listed on ties
    weights = selection.weights
    members = [Member(n, "model" if paths.get(n) else "classical", weights[n], selection.counts[n],
                      list(modalities[n]), paths.get(n)) for n in val_probs if n in weights]
    combined = combine([val_probs[m.name] for m in members], [m.weight for m in members])
    ensemble = member_figures(combined, y)
    beats = ensemble[key] > figures[single_best][key]
    return EnsembleSpec(metric, rounds, list(labels), members, single_best, "ensemble" if beats else single_best,
                        {"ensemble": ensemble, "trajectory": selection.trajectory, "members": figures})

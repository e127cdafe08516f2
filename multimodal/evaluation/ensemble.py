"""Ensemble selection (Caruana et al., ICML 2004, as AutoGluon's `greedy_ensemble/ensemble_selection.py`).

Greedy forward selection with replacement: start empty; each round add the member whose addition gives the best
validation score of the running weighted average of class probabilities; a member may be added again (its weight is
its count / rounds). As AutoGluon does (`use_best`), the selection keeps the prefix of rounds with the best score.

Missing modalities: a member's probabilities are NaN on the rows it cannot see (a unimodal model on a row lacking its
modality). On each row the average runs over the members that see it, weights renormalised; a row no chosen member
sees is scored as a uniform guess (log-likelihood) or as wrong (accuracy), so every candidate is judged on the same
rows. Only validation rows enter: the functions here take one split's probabilities and labels. Whether the ensemble
or the single best member is the default is decided by 2-fold cross-fitting on those rows (`choose`).

The saved form (`multimodal.models.ensemble`, `ensemble.json`) names members by reference, never copies them: each by
its folder relative to the ensemble's (a classical baseline's under `<base.paths.baseline>/models/`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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


def single_best_of(val_probs: Mapping[str, np.ndarray], y: np.ndarray, metric: str) -> str:
    """The best single member among those that see every row the first member (the fused model) sees, on all rows
    of `val_probs` by `metric`; the first listed on ties."""
    seen = {n: int((~np.isnan(p).any(axis=1)).sum()) for n, p in val_probs.items()}
    first = next(iter(val_probs))
    full = [n for n in val_probs if seen[n] >= seen[first]]
    return max(full, key=lambda n: score(val_probs[n], y, metric))


def halves(n: int, groups: Sequence[str] | None, seed: int) -> np.ndarray:
    """(n,) bool: the rows of the first of two halves. Whole groups (a row with a blank group, or every row without
    `groups`, is its own), in an order drawn from `seed`, each to the half holding fewer rows so far."""
    keys = [f"row:{i}" if groups is None or not groups[i] else f"group:{groups[i]}" for i in range(n)]
    unique, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(unique))
    first, filled = np.zeros(len(unique), dtype=bool), [0, 0]
    for g in np.random.default_rng(seed).permutation(len(unique)):
        side = 0 if filled[0] <= filled[1] else 1
        first[g] = side == 0
        filled[side] += sizes[g]
    return first[inverse]


def cross_fit(val_probs: Mapping[str, np.ndarray], y: np.ndarray, metric: str, rounds: int,
              first_half: np.ndarray) -> dict[str, Any] | None:
    """Both choices made on one half and scored on the other, both ways: the selected ensemble's and the single
    best member's held-out probabilities on every row, their figures, and what each half chose. None when a half
    is empty (too few rows or groups to cross-fit)."""
    if first_half.all() or not first_half.any():
        return None
    shape = next(iter(val_probs.values())).shape
    ensemble, single = np.full(shape, np.nan), np.full(shape, np.nan)
    folds = []
    for chosen_on in (first_half, ~first_half):
        held = ~chosen_on
        part = {n: p[chosen_on] for n, p in val_probs.items()}
        weights = select(part, y[chosen_on], metric, rounds).weights
        best = single_best_of(part, y[chosen_on], metric)
        ensemble[held] = combine([val_probs[n][held] for n in weights], list(weights.values()))
        single[held] = val_probs[best][held]
        folds.append({"n_selected_on": int(chosen_on.sum()), "n_scored_on": int(held.sum()), "weights": weights,
                      "single_best": best})
    return {"ensemble": member_figures(ensemble, y), "single_best": member_figures(single, y), "folds": folds}


def choose(val_probs: Mapping[str, np.ndarray], modalities: Mapping[str, list[str]], paths: Mapping[str, str | None],
           y: np.ndarray, labels: list[str], metric: str, rounds: int, classical: Collection[str] = (),
           groups: Sequence[str] | None = None, seed: int = 0) -> EnsembleSpec:
    """The ensemble of `val_probs`' members ({name: (N, C) on validation}, the first the fused best model), selected
    on every validation row, and whether it is the default. `paths`: each member's folder relative to the
    ensemble's (None: not saved as a model); `classical`: the names of the classical baselines.

    The default is decided out of sample, by 2-fold cross-fitting (`halves` of the rows from `seed`, groups kept
    whole): the ensemble only when the selection's held-out score beats the held-out score of picking the single
    best member (one seeing every row the first member sees) on the same rows. Comparing both on the rows the
    weights were fitted on would favour the ensemble, which can only gain there. Both figures are recorded."""
    selection = select(val_probs, y, metric, rounds)
    figures = {name: member_figures(p, y) for name, p in val_probs.items()}
    key = f"all_rows_{metric}"
    single_best = single_best_of(val_probs, y, metric)
    weights = selection.weights
    members = [Member(n, "classical" if n in classical else "model", weights[n], selection.counts[n],
                      list(modalities[n]), paths.get(n)) for n in val_probs if n in weights]
    combined = combine([val_probs[m.name] for m in members], [m.weight for m in members])
    ensemble = member_figures(combined, y)
    crossed = cross_fit(val_probs, y, metric, rounds, halves(len(y), groups, seed))
    # Too few rows or groups to hold any out: the ensemble is not shown to help, the single best stays.
    beats = crossed is not None and crossed["ensemble"][key] > crossed["single_best"][key]
    validation = {"ensemble": ensemble, "trajectory": selection.trajectory, "members": figures,
                  "in_sample": {"ensemble": ensemble[key], "single_best": figures[single_best][key]},
                  "cross_fitted": crossed, "default_by": "cross_fitted"}
    return EnsembleSpec(metric, rounds, list(labels), members, single_best, "ensemble" if beats else single_best,
                        validation)

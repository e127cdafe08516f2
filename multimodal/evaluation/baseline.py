"""The classical baseline every run is measured against: standard features + scikit-learn logistic regression.

Features come from the preprocessed shards through a fitted recipe per modality (`multimodal.models.classical_features`:
chosen by the processor's output key, or the modality's own). One model per modality (fitted and scored on the rows
that have it) and one early-fused model (every modality's features side by side, zeros where a modality is missing
plus one missing-indicator column each). Each is fitted on train, its regularisation `C` chosen on val; test
predictions and class probabilities are written for `evaluate`, which scores them beside the deep models on the same
rows, and each model is saved as a folder (`multimodal.models.classical`) that `predict` and an ensemble run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from multimodal.evaluation.params import Baseline
from multimodal.evaluation.scoring import ABSTAIN
from multimodal.models.classical import ClassicalModel, design_matrix
from multimodal.models.classical_features import fit_recipe
from multimodal.storage.columns import absent_like, concat_rows
from multimodal.storage.dataset import SplitData

logger = logging.getLogger(__name__)

EARLY_FUSION = "early_fusion"
PREDICTIONS = "test_predictions.csv"  # under base.paths.baseline
PROBABILITIES = "test_probabilities.csv"  # beside it: one row per (model, test row it sees)
VAL_PROBABILITIES = "val_probabilities.csv"  # the same for validation rows: what ensemble selection reads
PREFIX = "baseline_"  # evaluate's name for a baseline model: baseline_early_fusion, baseline_<modality>
MODELS = "models"  # beside them: each fitted model as a folder `models/baseline_<name>/` (`ClassicalModel`)


def joined(splits: Mapping[str, SplitData]) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """The splits stacked row-wise: (split name per row, labels, tensors per modality, presence per modality)."""
    parts = list(splits.values())
    which = np.concatenate([np.full(len(d), s) for s, d in splits.items()])
    labels = torch.cat([d.labels for d in parts]).numpy()
    tensors = {}
    for m in parts[0].modalities:
        # A split without a single row of `m` has no tensors of it at all: zeros of the shape the others have.
        like = next((d.inputs[m] for d in parts if d.inputs[m]), {})
        # Lazy columns stay lazy: feature functions read them a chunk of rows at a time.
        tensors[m] = {k: concat_rows([d.inputs[m].get(k, absent_like(v, len(d))) for d in parts])
                      for k, v in like.items()}
    masks = {m: torch.cat([d.masks[m] for d in parts]).numpy() for m in parts[0].modalities}
    return which, labels, tensors, masks


def designs(features: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """(design matrix, rows it covers, modalities it reads) of each model: one per modality, then the early-fused
    one."""
    out = {m: (design_matrix({m: x}, masks, False), masks[m], [m]) for m, x in features.items()}
    if len(features) > 1:
        rows = np.stack([masks[m] for m in features]).any(0)
        out[EARLY_FUSION] = (design_matrix(features, masks, True), rows, list(features))
    return out


def fit_selected(x_train, y_train, x_val, y_val, cfg: Baseline, seed: int) -> tuple[Pipeline, float, float]:
    """StandardScaler + LogisticRegression fitted on train for each `C` of `cfg.c_grid`; the best on val wins.

    Ties go to the smaller C (the grid is tried in increasing order): the simpler model.
    """
    best = None
    for c in sorted(cfg.c_grid):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=cfg.max_iter, random_state=seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x_train, y_train)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            logger.info("baseline: C=%g stopped at baseline.max_iter=%d before converging", c, cfg.max_iter)
        accuracy = float((model.predict(x_val) == y_val).mean()) if len(y_val) else float("nan")
        if best is None or accuracy > best[2]:
            best = (model, c, accuracy)
    return best


@dataclass
class Fitted:
    """What `fit_baselines` fitted, by model name: its metrics, its test predictions (a class per test row, ABSTAIN
    where it has no input), its class probabilities per split ({"val" | "test": {model: (rows, n_classes)}}, NaN
    rows where it has no input), and the model to save (absent when a feature recipe cannot be applied to new rows).
    """

    metrics: dict[str, dict] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {"val": {}, "test": {}})
    models: dict[str, ClassicalModel] = field(default_factory=dict)


def fit_baselines(splits: Mapping[str, SplitData], cfg: Baseline, seed: int, labels: list[str]) -> Fitted:
    """Every baseline (one per modality with features, and the early-fused one) fitted on train, C chosen on val."""
    which, y, tensors, masks = joined(splits)
    recipes, features = {}, {}
    for modality in tensors:
        fitted = fit_recipe(modality, tensors[modality], (which == "train") & masks[modality], cfg)
        if fitted is not None:
            recipes[modality], features[modality] = fitted
    out = Fitted()
    # One BLAS thread: on these small problems threads only add contention (200x slower on a busy 2-core
    # machine), and single-threaded reductions make the fitted weights bit-reproducible.
    with threadpool_limits(limits=1):
        for name, (x, rows, reads) in designs(features, masks).items():
            fitted = _fit_one(name, x, rows, which, y, cfg, seed, len(labels))
            if not fitted:
                continue
            out.metrics[name], out.predictions[name], proba, (pipeline, c) = fitted
            for split in out.probabilities:
                out.probabilities[split][name] = proba[split]
            if all(recipes[m] is not None for m in reads):
                out.models[name] = ClassicalModel.from_pipeline(
                    pipeline, labels, {m: recipes[m] for m in reads}, {m: features[m].shape[1] for m in reads},
                    name == EARLY_FUSION, c)
    return out


def _fit_one(name: str, x: np.ndarray, rows: np.ndarray, which: np.ndarray, y: np.ndarray, cfg: Baseline,
             seed: int, n_classes: int) -> tuple[dict, np.ndarray, dict[str, np.ndarray], tuple] | None:
    """One model on `rows`: fitted on train, C chosen on val; its metrics, test predictions, its val and test
    probabilities, and (the fitted pipeline, its C)."""
    test = which == "test"
    train, val = rows & (which == "train"), rows & (which == "val")
    if len(np.unique(y[train])) < 2:
        logger.warning("baseline '%s': fewer than two classes among its %d train rows; left out", name, train.sum())
        return None
    model, c, val_accuracy = fit_selected(x[train], y[train], x[val], y[val], cfg, seed)
    pred = np.full(test.sum(), ABSTAIN, dtype=np.int64)
    seen = rows[test]
    if seen.any():
        pred[seen] = model.predict(x[test][seen])
    proba = {split: _probabilities(model, x, rows, which == split, n_classes) for split in ("val", "test")}
    metrics = {"C": c, "val_accuracy": val_accuracy, "n_val": int(val.sum()), "features": x.shape[1],
               "test_accuracy": float((pred[seen] == y[test][seen]).mean()) if seen.any() else None,
               "n_test": int(seen.sum())}
    logger.info("baseline %s: %s", name, metrics)
    return metrics, pred, proba, (model, c)


def _probabilities(model: Pipeline, x: np.ndarray, rows: np.ndarray, split: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows of `split`, n_classes) probabilities, NaN rows where the model has no input."""
    proba = np.full((split.sum(), n_classes), np.nan)
    seen = rows[split]
    if seen.any():
        proba[seen] = 0.0  # a class without a train row of this model: probability 0
        proba[np.ix_(np.flatnonzero(seen), model.classes_)] = model.predict_proba(x[split][seen])
    return proba


def write_predictions(path: Path, sample_ids: list[str], y: np.ndarray, predictions: Mapping[str, np.ndarray],
                      labels: list[str]) -> None:
    """CSV: sample_id, label, then one column per model holding the predicted label ("" where it abstains)."""
    frame = pd.DataFrame({"sample_id": sample_ids, "label": [labels[i] for i in y]})
    for name, pred in predictions.items():
        frame[name] = ["" if p == ABSTAIN else labels[p] for p in pred]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_probabilities(path: Path, sample_ids: list[str], probabilities: Mapping[str, np.ndarray],
                        labels: list[str]) -> None:
    """CSV: model, sample_id, then one column per class label holding its probability; a row per model and test
    row it sees (floats written exactly: `read_probabilities` gives the same numbers back)."""
    clash = {"model", "sample_id"} & set(labels)
    if clash:
        raise ValueError(f"{path}: class label(s) {sorted(clash)} collide with the file's own columns")
    frames = []
    for name, proba in probabilities.items():
        seen = ~np.isnan(proba).any(axis=1)
        frame = pd.DataFrame(proba[seen], columns=labels)
        frame.insert(0, "sample_id", np.asarray(sample_ids, dtype=object)[seen])
        frame.insert(0, "model", name)
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)


def read_probabilities(path: Path, sample_ids: list[str], labels: list[str]) -> dict[str, np.ndarray]:
    """`write_probabilities`' file as `{baseline_<model>: (rows of sample_ids, classes)}`, NaN rows where a model
    has no input; an error names a missing file or class column."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (written by an older `baseline`): re-run `dvc repro baseline`")
    frame = pd.read_csv(path, dtype={"model": str, "sample_id": str})
    missing = [label for label in labels if label not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no probability column for class(es) {missing[:5]}: re-run `dvc repro baseline`")
    position = {sid: i for i, sid in enumerate(sample_ids)}
    out = {}
    for name, rows in frame.groupby("model", sort=False):
        proba = np.full((len(sample_ids), len(labels)), np.nan)
        at = rows["sample_id"].map(position)
        known = at.notna().to_numpy()
        proba[at[known].astype(int).to_numpy()] = rows.loc[known, labels].to_numpy(dtype=np.float64)
        out[PREFIX + name] = proba
    return out


def read_predictions(path: Path, sample_ids: list[str], labels: list[str]) -> dict[str, np.ndarray]:
    """`write_predictions`' file as `{baseline_<model>: class per row of sample_ids}`, or an error naming rows."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("sample_id")
    missing = [s for s in sample_ids if s not in frame.index]
    if missing:
        raise ValueError(f"{path} lacks test sample(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                         "it predates the current split; re-run `dvc repro baseline`")
    index = {name: i for i, name in enumerate(labels)}
    frame = frame.loc[sample_ids]
    out = {}
    for column in frame.columns.drop("label"):
        unknown = sorted(set(frame[column]) - set(index) - {""})
        if unknown:
            raise ValueError(f"{path}: column '{column}' predicts unknown label(s) {unknown[:5]}")
        out[PREFIX + column] = np.array([index.get(v, ABSTAIN) for v in frame[column]], dtype=np.int64)
    return out

"""Test-split evaluation: the fused model, its single-modality ablations, unimodal and classical baselines.

Every model is scored on the rows where its inputs exist (`multimodal.scoring`); the fused model is compared with
each other model on the rows both see, with paired bootstrap intervals. Which unimodal model is "best" is decided
on validation accuracy, never on test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from multimodal.align import load_cached_features
from multimodal.dataset import SplitData
from multimodal.model import ModelSpec, load_model
from multimodal.scoring import ABSTAIN, best_by_validation, compare, model_scores
from multimodal.train import predict

logger = logging.getLogger(__name__)

FUSED = "fused"
BASELINE = "baseline_early_fusion"  # the classical model the fused one must beat (multimodal.baseline)


def inputs_for(spec: ModelSpec, test: SplitData, aligned_dir: Path) -> SplitData:
    """`test` restricted to the model's modalities, with cached features where the model reads them."""
    return load_cached_features(aligned_dir, test.only(spec.modalities), "test", spec.feature_modalities)


def _predict_seen(model, data: SplitData, seen: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Class per row, ABSTAIN where `seen` is false: there the model's output is a constant, not a prediction."""
    pred = np.full(len(data), ABSTAIN, dtype=np.int64)
    rows = torch.nonzero(seen).flatten()
    if len(rows):
        pred[rows.numpy()] = predict(model, data.take(rows), batch_size, device).argmax(1).numpy()
    return pred


def deep_predictions(models_dir: Path, test: SplitData, batch_size: int, device: torch.device,
                     aligned_dir: Path) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """Predictions of the fused model, its ablations (`fused_only_<m>`) and the unimodal models (`unimodal_<m>`).

    Each saved model reads the test split in its own form: a model trained with the `frozen` strategy reads every
    modality from `align`'s cached features (`aligned_dir`), others only the `align.freeze` ones.
    """
    model, spec = load_model(models_dir / "best", device)
    fused_test = inputs_for(spec, test, aligned_dir)
    preds = {FUSED: _predict_seen(model, fused_test, fused_test.any_present(), batch_size, device)}
    for modality in spec.modalities:
        present = test.masks[modality]
        # Ablation: the fused model shown only this modality (the others masked as missing).
        masked = SplitData(test.sample_ids, test.labels, fused_test.inputs,
                           {m: v if m == modality else torch.zeros_like(v) for m, v in fused_test.masks.items()})
        preds[f"fused_only_{modality}"] = _predict_seen(model, masked, present, batch_size, device)
        baseline_dir = models_dir / "unimodal" / modality
        if baseline_dir.exists():
            unimodal, unimodal_spec = load_model(baseline_dir, device)
            preds[f"unimodal_{modality}"] = _predict_seen(
                unimodal, inputs_for(unimodal_spec, test, aligned_dir), present, batch_size, device)
    return preds, spec


def _flat(prefix: str, value: float | None, interval: list[float] | None, n: int) -> dict:
    """Headline keys of one figure: scalars only, since `dvc exp show` and `dvc metrics show` drop lists."""
    low, high = interval or (None, None)
    return {prefix: value, f"{prefix}_ci95_lo": low, f"{prefix}_ci95_hi": high, f"{prefix}_n": n}


def _difference(comparisons: dict, name: str | None, prefix: str) -> dict:
    """Headline keys of the paired fused-minus-`name` figure."""
    if name is None or name not in comparisons["paired"]:
        return {}
    paired = comparisons["paired"][name]
    return _flat(prefix, paired[f"{FUSED}_minus"], paired[f"{FUSED}_minus_ci95"], paired["n"])


def fair_report(y: np.ndarray, preds: Mapping[str, np.ndarray], unimodal_val_accuracy: Mapping[str, float],
                resamples: int, seed: int) -> dict:
    """evaluate.json: a few flat headline keys first (what `dvc exp show` compares), then the details.

    `unimodal_val_accuracy` maps a modality to its unimodal model's validation accuracy (tune.json): the best
    unimodal model is the one validation prefers.
    """
    models = {name: model_scores(name, y, pred, resamples, seed) for name, pred in preds.items()}
    comparisons = compare(FUSED, y, preds, resamples, seed)
    candidates = {m: v for m, v in unimodal_val_accuracy.items() if f"unimodal_{m}" in preds}
    best = best_by_validation(candidates)
    fused = models[FUSED]
    headline = {**_flat("fused_accuracy", fused["accuracy"], fused["ci95"], fused["n"]), "n_test": len(y),
                "best_unimodal": best,
                **_difference(comparisons, best and f"unimodal_{best}", "fused_minus_best_unimodal")}
    if BASELINE in preds:
        headline["baseline_accuracy"] = models[BASELINE]["accuracy"]
        headline.update(_difference(comparisons, BASELINE, "fused_minus_baseline"))
        headline["fused_beats_baseline"] = bool((headline["fused_minus_baseline"] or 0) > 0)
    return {**headline, "models": models, **comparisons}


def warn_if_baseline_wins(report: Mapping) -> None:
    """The loud line a user must not miss: the fused deep model does not beat the classical early fusion."""
    if report.get("fused_beats_baseline") is False:
        low, high = report["fused_minus_baseline_ci95_lo"], report["fused_minus_baseline_ci95_hi"]
        logger.warning(
            "!!! The fused deep model does NOT beat the classical baseline: test accuracy %.4f vs %.4f for %s "
            "(difference %+.4f, 95%% interval [%+.4f, %+.4f], n=%d). A logistic regression on standard features "
            "does at least as well: check the data, the search space and the augmentation before trusting it.",
            report["fused_accuracy"], report["baseline_accuracy"], BASELINE, report["fused_minus_baseline"],
            low, high, report["fused_minus_baseline_n"])

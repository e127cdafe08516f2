"""Test-split evaluation: the fused model, its single-modality ablations, unimodal and classical baselines.

Every model is scored on the rows where its inputs exist (`multimodal.evaluation.scoring`); the fused model is compared
with
each other model on the rows both see, with paired bootstrap intervals. Which unimodal model is "best" is decided
on validation accuracy, never on test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multimodal.evaluation.scoring import (
    ABSTAIN,
    best_by_validation,
    compare,
    model_scores,
    paired_difference,
    rng_for,
    top_label,
)
from multimodal.models.model import ModelSpec, load_model
from multimodal.storage.dataset import SplitData
from multimodal.training.align import load_cached_features
from multimodal.training.train import predict

logger = logging.getLogger(__name__)

FUSED = "fused"
ENSEMBLE = "ensemble"  # the selected ensemble (multimodal.evaluation.ensemble), scored like any other model
BASELINE = "baseline_early_fusion"  # the classical model the fused one must beat (multimodal.evaluation.baseline)
NOTHING = "none"  # name of the empty set of removed modalities (multimodal.evaluation.robustness.missing_modality)


def inputs_for(spec: ModelSpec, data: SplitData, aligned_dir: Path, split: str = "test") -> SplitData:
    """`data` (split `split`) restricted to the model's modalities, with cached features where the model reads
    them."""
    return load_cached_features(aligned_dir, data.only(spec.modalities), split, spec.feature_modalities)


@dataclass
class ModelOnTestSplit:
    """A saved model and a split (test unless told) in the form it reads (cached features where its spec says so)."""

    model: nn.Module
    spec: ModelSpec
    data: SplitData

    @classmethod
    def load(cls, model_dir: Path, data: SplitData, aligned_dir: Path, device: torch.device,
             split: str = "test") -> "ModelOnTestSplit":
        model, spec = load_model(model_dir, device)
        return cls(model, spec, inputs_for(spec, data, aligned_dir, split))

    def probabilities(self, data: SplitData, batch_size: int, device: torch.device) -> np.ndarray:
        """(N, C) class probabilities of `data` (this model's form), NaN on the rows holding none of its
        modalities: there the model's output is a constant, not a prediction (`top_label` makes them ABSTAIN)."""
        rows = torch.nonzero(data.any_present()).flatten()
        probs = np.full((len(data), len(self.spec.labels)), np.nan)
        if len(rows):
            probs[rows.numpy()] = predict(self.model, data.take(rows), batch_size, device).numpy()
        return probs

    def predict(self, data: SplitData, batch_size: int, device: torch.device) -> np.ndarray:
        """Class per row of `data`, ABSTAIN where the model sees nothing."""
        return top_label(self.probabilities(data, batch_size, device))


def load_readers(models_dir: Path, test: SplitData, aligned_dir: Path, device: torch.device
                 ) -> dict[str, ModelOnTestSplit]:
    """The fused model (`FUSED`, `models_dir/best`) and every saved unimodal model (`unimodal_<m>`), each with the
    test split in its own form: a `frozen`-strategy model reads every modality from align's cached features
    (`aligned_dir`), the others only the `align.freeze` ones."""
    readers = {FUSED: ModelOnTestSplit.load(models_dir / "best", test, aligned_dir, device)}
    for modality in readers[FUSED].spec.modalities:
        if (models_dir / "unimodal" / modality).exists():
            readers[f"unimodal_{modality}"] = ModelOnTestSplit.load(models_dir / "unimodal" / modality, test,
                                                                    aligned_dir, device)
    return readers


def reader_probabilities(readers: Mapping[str, ModelOnTestSplit], batch_size: int, device: torch.device
                         ) -> dict[str, np.ndarray]:
    """Class probabilities of the fused model, its ablations (`fused_only_<m>`: only modality m shown, the others
    masked as missing) and the unimodal models, each NaN on the rows it does not see."""
    fused = readers[FUSED]
    probs = {FUSED: fused.probabilities(fused.data, batch_size, device)}
    for modality in fused.spec.modalities:
        others = [m for m in fused.spec.modalities if m != modality]
        probs[f"fused_only_{modality}"] = fused.probabilities(with_masked(fused.data, others), batch_size, device)
        if f"unimodal_{modality}" in readers:
            reader = readers[f"unimodal_{modality}"]
            probs[f"unimodal_{modality}"] = reader.probabilities(reader.data, batch_size, device)
    return probs


def with_masked(data: SplitData, removed: list[str]) -> SplitData:
    """`data` with the modalities `removed` marked missing on every row (their inputs stay; the model skips them)."""
    return SplitData(data.sample_ids, data.labels, data.inputs,
                     {m: torch.zeros_like(v) if m in removed else v for m, v in data.masks.items()})


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


def fair_report(y: np.ndarray, preds: Mapping[str, np.ndarray], single_modality_val_accuracy: Mapping[str, float],
                resamples: int, seed: int) -> dict:
    """evaluate.json: a few flat headline keys first (what `dvc exp show` compares), then the details.

    `single_modality_val_accuracy` maps a single-modality model (`unimodal_<m>`, deep; `baseline_<m>`, classical)
    to its validation accuracy on the rows it sees: `best_unimodal` is the one validation prefers, deep or classical.
    """
    models = {name: model_scores(name, y, pred, resamples, seed) for name, pred in preds.items()}
    comparisons = compare(FUSED, y, preds, resamples, seed)
    candidates = {m: v for m, v in single_modality_val_accuracy.items() if m in preds and v is not None}
    best = best_by_validation(candidates)
    fused = models[FUSED]
    headline = {**_flat("fused_accuracy", fused["accuracy"], fused["ci95"], fused["n"]), "n_test": len(y),
                "best_unimodal": best, **_difference(comparisons, best, "fused_minus_best_unimodal")}
    if BASELINE in preds:
        headline["baseline_accuracy"] = models[BASELINE]["accuracy"]
        headline.update(_difference(comparisons, BASELINE, "fused_minus_baseline"))
        headline["fused_beats_baseline"] = bool((headline["fused_minus_baseline"] or 0) > 0)
    return {**headline, "models": models, **comparisons}


def ensemble_headline(report: Mapping, y: np.ndarray, preds: Mapping[str, np.ndarray], single_best: str,
                      default: str, resamples: int, seed: int) -> dict:
    """`report` with the ensemble's headline keys before its details: its test accuracy, the single best model
    (chosen on validation) and the paired ensemble-minus-single-best difference, and which one is the default."""
    ensemble = preds[ENSEMBLE]
    both = (ensemble != ABSTAIN) & (preds[single_best] != ABSTAIN)
    paired = paired_difference(ensemble[both] == y[both], preds[single_best][both] == y[both], resamples,
                               rng_for(seed, f"paired/{ENSEMBLE}/{single_best}"))
    scores = report["models"][ENSEMBLE]
    keys = {**_flat("ensemble_accuracy", scores["accuracy"], scores["ci95"], scores["n"]),
            "single_best": single_best, "single_best_accuracy": report["models"][single_best]["accuracy"],
            **_flat("ensemble_minus_single_best", paired["difference"], paired["ci95"], paired["n"]),
            "default_model": default}
    cut = list(report).index("models")
    items = list(report.items())
    return {**dict(items[:cut]), **keys, **dict(items[cut:])}


def with_details(report: Mapping, reliability: Mapping[str, dict], missing: list[dict],
                 skipped: Mapping[str, str]) -> dict:
    """`fair_report`'s dict plus each model's ECE (`models.<name>.ece`; `fused_ece` closes the headline keys), the
    fused accuracy with each set of modalities removed (`fused_accuracy_without`) and, if any, the modalities
    whose corruption curves were skipped, with why (`corruption_skipped`)."""
    keys = list(report)
    cut = keys.index("models")
    out = {**{k: report[k] for k in keys[:cut]}, "fused_ece": reliability[FUSED]["ece"],
           **{k: report[k] for k in keys[cut:]}}
    out["models"] = {name: {**scores, "ece": reliability[name]["ece"]} if name in reliability else scores
                     for name, scores in report["models"].items()}
    out["fused_accuracy_without"] = {row["removed"]: row["accuracy"] for row in missing if row["removed"] != NOTHING}
    if skipped:
        out["corruption_skipped"] = dict(skipped)
    return out


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

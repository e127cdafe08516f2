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

from multimodal.evaluation.claims import claim, headline_keys
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
from multimodal.models.temperature import load_temperature
from multimodal.storage.dataset import SplitData
from multimodal.training.align import load_cached_features
from multimodal.training.train import predict_logits

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
    """A saved model, its temperature (`multimodal.models.temperature`) and a split (test unless told) in the form
    it reads (cached features where its spec says so)."""

    model: nn.Module
    spec: ModelSpec
    data: SplitData
    temperature: float = 1.0

    @classmethod
    def load(cls, model_dir: Path, data: SplitData, aligned_dir: Path, device: torch.device,
             split: str = "test") -> "ModelOnTestSplit":
        model, spec = load_model(model_dir, device)
        return cls(model, spec, inputs_for(spec, data, aligned_dir, split), load_temperature(model_dir))

    def logits(self, data: SplitData, batch_size: int, device: torch.device) -> np.ndarray:
        """(N, C) logits of `data` (this model's form), NaN on the rows holding none of its modalities: there the
        model's output is a constant, not a prediction (`top_label` makes them ABSTAIN)."""
        rows = torch.nonzero(data.any_present()).flatten()
        logits = np.full((len(data), len(self.spec.labels)), np.nan)
        if len(rows):
            logits[rows.numpy()] = predict_logits(self.model, data.take(rows), batch_size, device).numpy()
        return logits

    def probabilities(self, data: SplitData, batch_size: int, device: torch.device) -> np.ndarray:
        """(N, C) class probabilities as trained (T = 1), NaN where the model sees nothing."""
        return softmax(self.logits(data, batch_size, device))

    def predict(self, data: SplitData, batch_size: int, device: torch.device) -> np.ndarray:
        """Class per row of `data`, ABSTAIN where the model sees nothing."""
        return top_label(self.probabilities(data, batch_size, device))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits` / `temperature` in float32 (as `predict`); NaN rows stay NaN."""
    return torch.softmax(torch.from_numpy(logits).float() / temperature, dim=-1).double().numpy()


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


def reader_logits(readers: Mapping[str, ModelOnTestSplit], batch_size: int, device: torch.device
                  ) -> dict[str, tuple[np.ndarray, float]]:
    """Logits and temperature of the fused model, its ablations (`fused_only_<m>`: only modality m shown, the
    others masked as missing; the fused model's temperature) and the unimodal models, each NaN on the rows it does
    not see."""
    fused = readers[FUSED]
    out = {FUSED: (fused.logits(fused.data, batch_size, device), fused.temperature)}
    for modality in fused.spec.modalities:
        others = [m for m in fused.spec.modalities if m != modality]
        out[f"fused_only_{modality}"] = (fused.logits(with_masked(fused.data, others), batch_size, device),
                                         fused.temperature)
        if f"unimodal_{modality}" in readers:
            reader = readers[f"unimodal_{modality}"]
            out[f"unimodal_{modality}"] = (reader.logits(reader.data, batch_size, device), reader.temperature)
    return out


def reader_probabilities(readers: Mapping[str, ModelOnTestSplit], batch_size: int, device: torch.device,
                         calibrated: bool = False) -> dict[str, np.ndarray]:
    """Class probabilities of every model `reader_logits` names, as trained or (`calibrated`) at its temperature."""
    return {name: softmax(logits, temperature if calibrated else 1.0)
            for name, (logits, temperature) in reader_logits(readers, batch_size, device).items()}


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


def _claim(comparisons: dict, name: str, statement: str) -> dict:
    """The claim "the fused model beats `name`", from their paired interval (`multimodal.evaluation.claims`)."""
    paired = comparisons["paired"][name]
    return claim(statement, paired[f"{FUSED}_minus"], paired[f"{FUSED}_minus_ci95"], paired["n"])


def fair_report(y: np.ndarray, preds: Mapping[str, np.ndarray], single_modality_val_accuracy: Mapping[str, float],
                resamples: int, seed: int) -> dict:
    """evaluate.json: a few flat headline keys first (what `dvc exp show` compares), then the details.

    `single_modality_val_accuracy` maps a single-modality model (`unimodal_<m>`, deep; `baseline_<m>`, classical)
    to its validation accuracy on the rows it sees: `best_unimodal` is the one validation prefers, deep or classical.
    The claims `fusion_helps` (fused beats that model) and `fused_beats_baseline` hold only when their paired
    interval lies above 0 (`claims` holds the sentences).
    """
    models = {name: model_scores(name, y, pred, resamples, seed) for name, pred in preds.items()}
    comparisons = compare(FUSED, y, preds, resamples, seed)
    candidates = {m: v for m, v in single_modality_val_accuracy.items() if m in preds and v is not None}
    best = best_by_validation(candidates)
    fused = models[FUSED]
    headline = {**_flat("fused_accuracy", fused["accuracy"], fused["ci95"], fused["n"]), "n_test": len(y),
                "best_unimodal": best, **_difference(comparisons, best, "fused_minus_best_unimodal")}
    claims = {}
    if best is not None:
        claims["fusion_helps"] = _claim(comparisons, best, "Fusion helps (the fused model beats the best "
                                        f"single-modality model, {best}, chosen on validation)")
        headline.update(headline_keys("fusion_helps", claims["fusion_helps"]))
    if BASELINE in preds:
        headline["baseline_accuracy"] = models[BASELINE]["accuracy"]
        headline.update(_difference(comparisons, BASELINE, "fused_minus_baseline"))
        claims["fused_beats_baseline"] = _claim(comparisons, BASELINE, "The fused model beats the classical "
                                                f"baseline ({BASELINE})")
        headline.update(headline_keys("fused_beats_baseline", claims["fused_beats_baseline"]))
    return {**headline, "models": models, "claims": claims, **comparisons}


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
            **_flat("ensemble_minus_single_best", paired["difference"], paired["ci95"], paired["n"])}
    made = claim(f"The ensemble beats the single best model ({single_best}, chosen on validation)",
                 paired["difference"], paired["ci95"], paired["n"])
    keys.update(headline_keys("ensemble_beats_single_best", made), default_model=default)
    cut = list(report).index("models")
    items = list(report.items())
    out = {**dict(items[:cut]), **keys, **dict(items[cut:])}
    out["claims"] = {**report.get("claims", {}), "ensemble_beats_single_best": made}
    return out


def with_details(report: Mapping, reliability: Mapping[str, dict], missing: list[dict],
                 skipped: Mapping[str, str], calibrated: Mapping[str, dict] | None = None) -> dict:
    """`fair_report`'s dict plus each model's ECE (`models.<name>.ece`), and where `calibrated` has the model
    (`{name: reliability at its temperature, with "temperature"}`) its `ece_calibrated` and `temperature`; the fused
    model's close the headline keys (`fused_ece`, `fused_ece_calibrated`, `fused_temperature`). Then the fused
    accuracy with each set of modalities removed (`fused_accuracy_without`) and, if any, the modalities whose
    corruption curves were skipped, with why (`corruption_skipped`)."""
    calibrated = calibrated or {}
    keys = list(report)
    cut = keys.index("models")
    head = {"fused_ece": reliability[FUSED]["ece"]}
    if FUSED in calibrated:
        head.update(fused_ece_calibrated=calibrated[FUSED]["ece"], fused_temperature=calibrated[FUSED]["temperature"])
    out = {**{k: report[k] for k in keys[:cut]}, **head, **{k: report[k] for k in keys[cut:]}}
    out["models"] = {name: {**scores, **_calibration(reliability.get(name), calibrated.get(name))}
                     for name, scores in report["models"].items()}
    out["fused_accuracy_without"] = {row["removed"]: row["accuracy"] for row in missing if row["removed"] != NOTHING}
    if skipped:
        out["corruption_skipped"] = dict(skipped)
    return out


def _calibration(before: Mapping | None, after: Mapping | None) -> dict:
    out = {"ece": before["ece"]} if before else {}
    if after:
        out.update(ece_calibrated=after["ece"], temperature=after["temperature"])
    return out


def warn_if_baseline_wins(report: Mapping) -> None:
    """The loud line a user must not miss: the fused deep model is not shown to beat the classical early fusion."""
    if report.get("fused_beats_baseline") is False:
        logger.warning(
            "!!! The fused deep model is NOT shown to beat the classical baseline: test accuracy %.4f vs %.4f for %s. "
            "%s A logistic regression on standard features may do as well: check the data, the search space and "
            "the augmentation before trusting it.",
            report["fused_accuracy"], report["baseline_accuracy"], BASELINE,
            report["claims"]["fused_beats_baseline"]["sentence"])

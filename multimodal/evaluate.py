"""Test-split evaluation: fused model, missing-modality ablations, unimodal baselines; plain metric functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from multimodal.align import load_cached_features
from multimodal.dataset import SplitData
from multimodal.model import ModelSpec, load_model
from multimodal.train import predict


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def inputs_for(spec: ModelSpec, test: SplitData, aligned_dir: Path) -> SplitData:
    """`test` restricted to the model's modalities, with cached features where the model reads them."""
    return load_cached_features(aligned_dir, test.only(spec.modalities), "test", spec.feature_modalities)


def evaluate_models(models_dir: Path, test: SplitData, batch_size: int, device: torch.device, aligned_dir: Path):
    """Metrics dict plus the fused model's predictions (for plots).

    Each saved model reads the test split in its own form: a model trained with the `frozen` strategy reads every
    modality from `align`'s cached features (`aligned_dir`), others only the `align.freeze` ones.
    """
    model, spec = load_model(models_dir / "best", device)
    y = test.labels.numpy()
    fused_test = inputs_for(spec, test, aligned_dir)
    fused_pred = predict(model, fused_test, batch_size, device).argmax(1).numpy()
    metrics = {"fused": {**scores(y, fused_pred), "fusion": spec.fusion}}
    for modality in spec.modalities:
        # Ablation: the fused model shown only this modality (the others masked as missing).
        masked = SplitData(test.sample_ids, test.labels, fused_test.inputs,
                           {m: v if m == modality else torch.zeros_like(v) for m, v in fused_test.masks.items()})
        pred = predict(model, masked, batch_size, device).argmax(1).numpy()
        metrics[f"fused_only_{modality}"] = scores(y, pred)
        baseline_dir = models_dir / "unimodal" / modality
        if baseline_dir.exists():
            baseline, baseline_spec = load_model(baseline_dir, device)
            pred = predict(baseline, inputs_for(baseline_spec, test, aligned_dir), batch_size, device).argmax(1).numpy()
            metrics[f"unimodal_{modality}"] = scores(y, pred)
    unimodal = [v["accuracy"] for k, v in metrics.items() if k.startswith("unimodal_")]
    if unimodal:
        metrics["fused_minus_best_unimodal"] = metrics["fused"]["accuracy"] - max(unimodal)
    return metrics, y, fused_pred, spec.labels

"""Test-split evaluation: fused model, missing-modality ablations, unimodal baselines; plain metric functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from multimodal.dataset import SplitData
from multimodal.model import load_model
from multimodal.train import predict


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def evaluate_models(models_dir: Path, test: SplitData, batch_size: int, device: torch.device):
    """Metrics dict plus the fused model's predictions (for plots)."""
    model, spec = load_model(models_dir / "best", device)
    y = test.labels.numpy()
    fused_pred = predict(model, test.only(spec.modalities), batch_size, device).argmax(1).numpy()
    metrics = {"fused": {**scores(y, fused_pred), "fusion": spec.fusion}}
    for modality in spec.modalities:
        # Ablation: the fused model shown only this modality (the others masked as missing).
        masked = SplitData(test.sample_ids, test.labels, test.inputs,
                           {m: v if m == modality else torch.zeros_like(v) for m, v in test.masks.items()})
        pred = predict(model, masked.only(spec.modalities), batch_size, device).argmax(1).numpy()
        metrics[f"fused_only_{modality}"] = scores(y, pred)
        baseline_dir = models_dir / "unimodal" / modality
        if baseline_dir.exists():
            baseline, _ = load_model(baseline_dir, device)
            pred = predict(baseline, test.only([modality]), batch_size, device).argmax(1).numpy()
            metrics[f"unimodal_{modality}"] = scores(y, pred)
    unimodal = [v["accuracy"] for k, v in metrics.items() if k.startswith("unimodal_")]
    if unimodal:
        metrics["fused_minus_best_unimodal"] = metrics["fused"]["accuracy"] - max(unimodal)
    return metrics, y, fused_pred, spec.labels

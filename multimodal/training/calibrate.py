"""Fit a saved model's temperature on the validation rows it sees, and save it in the model's folder.

`tune` calls this for every model it writes (the best fused model and the unimodal references), inside its own
output folder: the temperature is part of the saved model, fitted on validation like every other choice, and no
other stage writes into `models/` (a stage must not modify another stage's outputs, or DVC's cache stops telling
the truth).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from multimodal.models.model import load_model
from multimodal.models.temperature import fit_temperature, save_temperature
from multimodal.storage.dataset import SplitData
from multimodal.training.align import load_cached_features
from multimodal.training.train import predict_logits, rows_with_inputs

logger = logging.getLogger(__name__)


def calibrate_saved(model_dir: Path, val: SplitData, aligned_dir: Path, batch_size: int, device: torch.device) -> dict:
    """`model_dir/temperature.json` fitted on the rows of `val` (every modality, raw processor outputs) holding one
    of the model's modalities, read as the model reads them (align's cached features where its spec says so)."""
    model, spec = load_model(model_dir, device)
    data = rows_with_inputs(load_cached_features(aligned_dir, val.only(spec.modalities), "val",
                                                 spec.feature_modalities))
    logits = predict_logits(model, data, batch_size, device) if len(data) else torch.empty(0, len(spec.labels))
    record = save_temperature(model_dir, fit_temperature(logits, data.labels), logits, data.labels)
    logger.info("%s: temperature %.3f on %d validation rows (NLL %s -> %s)", model_dir, record["temperature"],
                record["n"], record["val_nll_before"], record["val_nll_after"])
    return record

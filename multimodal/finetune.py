"""Supervised fine-tuning on top of the aligned embedder: fused models and unimodal baselines, one code path."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.align import load_embedder
from multimodal.dataset import SplitData
from multimodal.model import Embedder, ModelSpec, MultimodalModel
from multimodal.train import FitResult, TrainConfig, fit


def train_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a flat dict (a Ray trial config plus fixed knobs); unknown keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training knob(s) {unknown}; known: {sorted(known)}")
    return TrainConfig(**values)


def initial_model(aligned_dir: Path, labels: list[str], modalities: list[str], cfg: TrainConfig):
    """A model whose encoders and projections start from `align`'s weights; fusion and head are new."""
    embedder, meta = load_embedder(aligned_dir)
    if list(modalities) != list(meta["modalities"]):
        subset = Embedder({m: embedder.encoders[m] for m in modalities}, meta["align"]["dim"])
        subset.projections = nn.ModuleDict({m: embedder.projections[m] for m in modalities})
        embedder = subset
    torch.manual_seed(cfg.seed)  # fusion/head initialization depends on the seed only
    model = MultimodalModel(embedder, cfg.fusion, len(labels), cfg.dropout)
    spec = ModelSpec(list(modalities), {m: meta["encoders"][m] for m in modalities}, labels,
                     meta["align"]["dim"], cfg.fusion, cfg.dropout)
    return model, spec


def finetune(aligned_dir: Path, labels: list[str], train: SplitData, val: SplitData, cfg: TrainConfig,
             device: torch.device, modalities: list[str] | None = None, on_epoch=None
             ) -> tuple[MultimodalModel, ModelSpec, FitResult]:
    """Fine-tune on `modalities` (default: all in `train`); one modality gives a unimodal baseline."""
    modalities = modalities or train.modalities
    model, spec = initial_model(aligned_dir, labels, modalities, cfg)
    result = fit(model, train.only(modalities), val.only(modalities), cfg, device, on_epoch)
    return model, spec, result

"""Supervised fine-tuning on top of the aligned embedder: fused models and unimodal baselines, one code path.

Step two of the tune story (`multimodal.training.train` has it whole): builds the model a strategy trains from what
`align`
saved, then hands it to `train.fit`; `tune` calls this once per trial.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.modalities import set_input_norm
from multimodal.modalities.base import FeatureInput
from multimodal.models.fusion import fusion_knobs
from multimodal.models.model import Embedder, ModelSpec, MultimodalModel, encoder_entry
from multimodal.models.strategies import apply_strategy, feature_modalities
from multimodal.storage.dataset import SplitData
from multimodal.training.align import load_embedder
from multimodal.training.train import FitResult, TrainConfig, fit


def train_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a flat dict (a Ray trial config plus fixed knobs); unknown or missing keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown, missing = sorted(set(values) - known), sorted(known - set(values))
    if unknown or missing:
        raise ValueError(f"training knobs: unknown {unknown}, missing {missing}; known: {sorted(known)}")
    return TrainConfig(**values)


def initial_model(aligned_dir: Path, labels: list[str], modalities: list[str], cfg: TrainConfig):
    """A model whose encoders and projections start from `align`'s weights, set up for `cfg.strategy`.

    Fusion and head are new. The data it trains on must come from `load_splits(..., strategy=cfg.strategy)`:
    the model reads exactly `spec.feature_modalities` as cached features.
    """
    embedder, meta = load_embedder(aligned_dir)
    if list(modalities) != list(meta["modalities"]):
        subset = Embedder({m: embedder.encoders[m] for m in modalities}, meta["align"]["dim"])
        subset.projections = nn.ModuleDict({m: embedder.projections[m] for m in modalities})
        embedder = subset
    norms = input_norms(modalities, cfg, meta)
    for modality, kind in norms.items():
        set_input_norm(embedder.encoders[modality], modality, kind)
    torch.manual_seed(cfg.seed)  # adapter, fusion and head initialization depend on the seed only
    apply_strategy(embedder, cfg)
    knobs = fusion_knobs(cfg.fusion, asdict(cfg))
    model = MultimodalModel(embedder, cfg.fusion, len(labels), cfg.dropout, knobs)
    encoders = {m: encoder_entry(e) if isinstance(e, FeatureInput) else meta["encoders"][m]
                for m, e in embedder.encoders.items()}
    spec = ModelSpec(list(modalities), encoders, labels, meta["align"]["dim"], cfg.fusion, cfg.dropout, knobs,
                     {m: k for m, k in norms.items() if k != "none"})
    return model, spec


def input_norms(modalities: list[str], cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, str]:
    """The input normalisation of each modality whose encoder runs while training, from `cfg.input_norm`.

    Features cached by `align` were normalised the align way (`tune.fixed.input_norm` when align ran); a config
    asking another one for them is refused, as the model could not honour it.
    """
    aligned = meta["align"].get("input_norm", {})
    cached = set(feature_modalities(cfg.strategy, meta))
    conflicts = [f"input_norm.{m}={cfg.input_norm.get(m, 'none')} but align cached the {m} features with "
                 f"{aligned.get(m, 'none')}" for m in modalities
                 if m in cached and cfg.input_norm.get(m, "none") != aligned.get(m, "none")]
    if conflicts:
        raise ValueError(f"{'; '.join(conflicts)}; the '{cfg.strategy}' strategy (and align.freeze) read those "
                         "features: re-run `align` with that tune.fixed.input_norm, or search input_norm only with "
                         "strategies that run the encoder")
    return {m: cfg.input_norm.get(m, "none") for m in modalities if m not in cached}


def check_inputs(spec: ModelSpec, data: SplitData) -> None:
    """Fail early, with the fix, when `data` holds raw inputs where the model reads cached features or vice versa."""
    features = set(spec.feature_modalities)
    wrong = [m for m in spec.modalities if data.inputs[m] and ("features" in data.inputs[m]) != (m in features)]
    if wrong:
        raise ValueError(f"the model reads {sorted(features)} as cached features but the data differs for {wrong}; "
                         "load it with multimodal.training.load_data.load_splits(..., "
                         "strategy=<the config's strategy>)")


def finetune(aligned_dir: Path, labels: list[str], train: SplitData, val: SplitData, cfg: TrainConfig,
             device: torch.device, modalities: list[str] | None = None, on_epoch=None, resume_from: Path | None = None
             ) -> tuple[MultimodalModel, ModelSpec, FitResult]:
    """Fine-tune on `modalities` (default: all in `train`); one modality gives a unimodal baseline."""
    modalities = modalities or train.modalities
    model, spec = initial_model(aligned_dir, labels, modalities, cfg)
    check_inputs(spec, train)
    result = fit(model, train.only(modalities), val.only(modalities), cfg, device, on_epoch, resume_from)
    return model, spec, result

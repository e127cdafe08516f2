"""The model is a composition: encoders (dict by modality) -> projections -> fusion -> head.

A model is saved as `model.safetensors` + `model.json` (its `ModelSpec`); `load_model` rebuilds it without any
download: trainable encoders from their saved HF config with their input normalisation, frozen ones as
cached-feature inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.modalities import rebuild_pooled_encoder, set_input_norm
from multimodal.modalities.base import FeatureInput
from multimodal.models.fusion import build_fusion
from multimodal.models.strategies import without_adapters
from multimodal.storage.io import read_json, write_json


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model. `encoders[m]` is {"features": dim} or {"hf_config": {...}};
    `fusion_knobs` the fusion's architecture knobs (`multimodal.models.fusion.fusion_knobs`). No architecture default.
    `input_norm[m]` names the normalisation the model applies to modality m's inputs (`Modality.normalizations`);
    features cached by `align` were normalised there already."""

    modalities: list[str]
    encoders: dict[str, dict[str, Any]]
    labels: list[str]
    dim: int
    fusion: str
    dropout: float
    fusion_knobs: dict[str, Any]
    input_norm: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes; never read to build the model

    @property
    def feature_modalities(self) -> list[str]:
        """Modalities this model reads as features cached by `align` instead of raw processor outputs."""
        return [m for m in self.modalities if "features" in self.encoders[m]]

    def restricted(self, modalities: list[str]) -> "ModelSpec":
        return ModelSpec(modalities, {m: self.encoders[m] for m in modalities}, self.labels, self.dim,
                         self.fusion, self.dropout, dict(self.fusion_knobs),
                         {m: k for m, k in self.input_norm.items() if m in modalities}, dict(self.extra))


def encoder_entry(encoder: nn.Module) -> dict[str, Any]:
    """How `ModelSpec` records an encoder: cached features, or the HF config to rebuild it from."""
    if isinstance(encoder, FeatureInput):
        return {"features": encoder.out_dim}
    # `_name_or_path` is where a pretrained encoder was loaded from: an absolute path on this machine (a venv's
    # site-packages for MiniLM) that rebuilding does not read, and that would make saved outputs differ per machine.
    return {"hf_config": {k: v for k, v in encoder.model.config.to_dict().items() if k != "_name_or_path"}}


def build_encoder_from_entry(modality: str, entry: dict[str, Any]) -> nn.Module:
    """The encoder of `modality` again from its saved entry (weights come from the state dict)."""
    if "features" in entry:
        return FeatureInput(int(entry["features"]))
    return rebuild_pooled_encoder(modality, entry)


class Embedder(nn.Module):
    """Encoders and their projections into one shared space; the part `align` pretrains."""

    def __init__(self, encoders: dict[str, nn.Module], dim: int):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(e.out_dim, dim), nn.LayerNorm(dim)) for m, e in encoders.items()}
        )

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.embed(m, inputs[m], masks[m]) for m in self.encoders}

    def embed(self, modality: str, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(B, dim) projected encodings of the rows `mask` marks present; zeros for the others.

        Absent rows never reach the encoder: their zero-filled inputs would cost compute and, in train mode,
        enter BatchNorm's batch statistics and so change the present rows' outputs. Fusion hides them anyway.
        """
        rows = mask.nonzero().flatten()
        width = self.projections[modality][0].out_features
        if not inputs or len(rows) == 0:  # no row has the modality (`{}`: none in the whole split)
            return mask.new_zeros((len(mask), width), dtype=torch.float)
        if len(rows) < len(mask):
            inputs = {k: v.index_select(0, rows) for k, v in inputs.items()}
        z = self.projections[modality](self.encoders[modality](**inputs))
        return z if len(rows) == len(mask) else z.new_zeros((len(mask), width)).index_copy(0, rows, z)


class MultimodalModel(nn.Module):
    def __init__(self, embedder: Embedder, fusion: str, n_classes: int, dropout: float, fusion_knobs: dict[str, Any]):
        super().__init__()
        self.embedder = embedder
        dim = next(iter(embedder.projections.values()))[0].out_features
        self.fusion = build_fusion(fusion, list(embedder.encoders), dim, n_classes, knobs=fusion_knobs)
        self.dropout = nn.Dropout(dropout)
        # A fusion that produces logits (late fusion) has one classifier per modality instead of a shared head.
        produces_logits = getattr(self.fusion, "produces_logits", False)
        self.head = None if produces_logits else nn.Linear(self.fusion.out_dim, n_classes)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classify(self.embedder(inputs, masks), masks)

    def classify(self, embedded: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from the projected encodings (`Embedder`'s output, zeros on absent rows): fusion and head only.
        A modality's embedding does not depend on another's mask, so switching masks off needs no encoder again
        (`multimodal.models.explain.with_contributions`)."""
        z = {m: self.dropout(v) for m, v in embedded.items()}
        fused = self.fusion(z, masks)
        return fused if self.head is None else self.head(self.dropout(fused))


def build_model(spec: ModelSpec) -> MultimodalModel:
    encoders = {m: build_encoder_from_entry(m, spec.encoders[m]) for m in spec.modalities}
    for modality, kind in spec.input_norm.items():
        set_input_norm(encoders[modality], modality, kind)
    return MultimodalModel(Embedder(encoders, spec.dim), spec.fusion, len(spec.labels), spec.dropout,
                           spec.fusion_knobs)


def state_dict_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path) -> None:
    """Weights + spec of a plain model: LoRA adapters are merged into a copy, so loading needs no peft."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_saving(without_adapters(model)), str(out_dir / "model.safetensors"))
    write_json(out_dir / "model.json", asdict(spec))


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[MultimodalModel, ModelSpec]:
    model_dir = Path(model_dir)
    try:
        spec = ModelSpec(**read_json(model_dir / "model.json"))
    except TypeError as err:  # a key missing or unknown: written by another version (e.g. before `fusion_knobs`)
        raise ValueError(f"{model_dir / 'model.json'}: {err}; re-run the stage that saved it (tune)") from None
    model = build_model(spec)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.to(device).eval(), spec

"""Knowledge distillation (Hinton et al. 2015) into a smaller student, by the training loop every model uses.

The student has the teacher's modalities, fusion and head, and smaller encoders: each one's HF config with the
overrides `compress.distill.encoders` gives (e.g. `text: {num_hidden_layers: 3}`). It runs every encoder itself,
the ones the teacher reads as cached features included, so it trains on processor outputs; its weights start
from the teacher's wherever a name and shape match (the first layers of a shortened transformer, an unchanged
ResNet), the rest from scratch. The loss on each augmented training batch is
`alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)`, the teacher seeing the same batch
and masks; the best epoch is chosen on validation accuracy (`train.fit`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from multimodal.evaluation.efficiency import EndToEnd
from multimodal.models.model import ModelSpec, MultimodalModel, build_model
from multimodal.storage.dataset import SplitData

logger = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction="batchmean")
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distillation_objective(teacher: nn.Module, temperature: float, alpha: float):
    """The `objective` of `train.fit`: the distillation loss of a batch, the teacher in eval mode without grads."""
    teacher.eval()

    def objective(logits: torch.Tensor, batch: SplitData, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(batch.inputs, masks).float()
        return kd_loss(logits, teacher_logits, batch.labels, temperature, alpha)

    return objective


def student_spec(teacher: EndToEnd, spec: ModelSpec, overrides: dict[str, dict[str, Any]]) -> ModelSpec:
    """The teacher's spec with every encoder its own (HF config from the model or from the encoder behind cached
    features) and `overrides[m]` applied to modality m's config."""
    unknown = sorted(set(overrides) - set(spec.modalities))
    if unknown:
        raise ValueError(f"compress.distill.encoders names {unknown}, which the model has not; it has "
                         f"{spec.modalities}")
    encoders, norms = {}, dict(spec.input_norm)
    for modality in spec.modalities:
        if modality in teacher.encoders:  # behind cached features: its config and input normalisation
            behind = teacher.encoders[modality]
            config = {k: v for k, v in behind.model.config.to_dict().items() if k != "_name_or_path"}
            kind = behind.input_norm.kind if behind.input_norm is not None else "none"
            if kind != "none":
                norms[modality] = kind
        else:
            config = dict(spec.encoders[modality]["hf_config"])
        encoders[modality] = {"hf_config": {**config, **overrides.get(modality, {})}}
    return ModelSpec(spec.modalities, encoders, spec.labels, spec.dim, spec.fusion, spec.dropout,
                     dict(spec.fusion_knobs), norms, {**spec.extra, "distilled": {"encoders": overrides}})


def teacher_state(teacher: EndToEnd) -> dict[str, torch.Tensor]:
    """The teacher's tensors under the names a student of `student_spec` has."""
    state = {k.removeprefix("model."): v for k, v in teacher.state_dict().items() if k.startswith("model.")}
    for modality, encoder in teacher.encoders.items():
        state |= {f"embedder.encoders.{modality}.{k}": v for k, v in encoder.state_dict().items()}
    return state


LAYER = re.compile(r"^(embedder\.encoders\.(\w+)\..*\.layer\.)(\d+)(\..*)$")  # a transformer block's tensors


def spread_layers(state: dict[str, torch.Tensor], teacher_layers: dict[str, int], student_layers: dict[str, int]
                  ) -> dict[str, torch.Tensor]:
    """`state` with the transformer blocks of each modality whose student has fewer renumbered so that student
    block i takes teacher block round((i + 1) * T / S) - 1: evenly spread, the last kept (its outputs are what
    the copied projection was trained on), as DistilBERT takes every other block."""
    out = {}
    for name, tensor in state.items():
        match = LAYER.match(name)
        if match is None or student_layers.get(match[2], 0) >= teacher_layers.get(match[2], 0):
            out[name] = tensor
            continue
        t, s = teacher_layers[match[2]], student_layers[match[2]]
        picked = {round((i + 1) * t / s) - 1: i for i in range(s)}
        if int(match[3]) in picked:
            out[f"{match[1]}{picked[int(match[3])]}{match[4]}"] = tensor
    return out


def _depths(spec: ModelSpec) -> dict[str, int]:
    return {m: int(e["hf_config"]["num_hidden_layers"]) for m, e in spec.encoders.items()
            if "num_hidden_layers" in e.get("hf_config", {})}


def build_student(teacher: EndToEnd, spec: ModelSpec, teacher_spec: ModelSpec) -> MultimodalModel:
    """The student of `spec`, starting from the teacher's tensors wherever a name and shape match (a shortened
    transformer from evenly spread teacher blocks: `spread_layers`)."""
    student = build_model(spec)
    full = student_spec(teacher, teacher_spec, {})  # the teacher's encoders as the student records them
    source = spread_layers(teacher_state(teacher), _depths(full), _depths(spec))
    own = student.state_dict()
    shared = {k: v.clone() for k, v in source.items() if k in own and own[k].shape == v.shape}
    student.load_state_dict(shared, strict=False)
    logger.info("student: %d of %d tensors from the teacher, %d parameters (teacher %d)", len(shared), len(own),
                sum(p.numel() for p in student.parameters()), sum(p.numel() for p in teacher.parameters()))
    return student

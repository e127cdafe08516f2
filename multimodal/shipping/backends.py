"""What runs a saved model on processed rows: PyTorch on a model folder (`tune`'s `models/best`), or onnxruntime on
an exported bundle (`export`). Both read the same processing settings and return the same probabilities, so
`predict` and `serve` read and process inputs once, whichever runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.compression.variant import is_variant, load_variant_for_raw_inputs
from multimodal.modalities import recorded_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import bundled_processing, load_for_raw_inputs
from multimodal.models.classical import is_classical, load_classical_for_raw_inputs
from multimodal.models.ensemble import EnsembleModel, EnsembleSpec, is_ensemble
from multimodal.models.explain import mask_off, probability_drop, with_contributions
from multimodal.models.explain import probabilities as class_probabilities
from multimodal.models.model import ModelSpec
from multimodal.models.temperature import load_temperature
from multimodal.shipping.graph import OUTPUT, GraphInput, feed_tensors
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json

GRAPH = "model.onnx"
INPUTS = "inputs.json"  # an exported bundle's: the graph's tensors and the preprocessing of each (export.py)


@dataclass
class TorchBackend:
    """A model folder on PyTorch (`load_for_raw_inputs`: every modality from raw processor outputs) at its
    validation-fitted temperature, or an ensemble folder (`ensemble.json`) as one model of its deep members."""

    model: torch.nn.Module
    labels: list[str]
    modalities: list[str]
    processing: dict[str, ModalitySpec]
    device: torch.device
    temperature: float = 1.0

    @classmethod
    def load(cls, model_dir: Path, device: torch.device) -> "TorchBackend":
        model, spec, processing = load_any_for_raw_inputs(model_dir, device)
        # Fitted on validation by tune; 1 for a model saved before, and for an ensemble (its members carry theirs).
        return cls(model, list(spec.labels), list(spec.modalities), processing, device, load_temperature(model_dir))

    def probabilities(self, data: SplitData) -> torch.Tensor:
        return class_probabilities(self.model, data, self.temperature, max(len(data), 1), self.device)

    def contributions(self, data: SplitData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Probabilities and each modality's contribution to the predicted class (`multimodal.models.explain`)."""
        return with_contributions(self.model, data, self.temperature, max(len(data), 1), self.device)


@dataclass
class OnnxBackend:
    """An exported bundle on onnxruntime's CPU provider."""

    session: Any  # onnxruntime.InferenceSession
    labels: list[str]
    modalities: list[str]
    processing: dict[str, ModalitySpec]
    inputs: list[GraphInput]

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> "OnnxBackend":
        import onnxruntime

        folder = Path(folder)
        if not (folder / GRAPH).is_file() or not (folder / INPUTS).is_file():
            raise FileNotFoundError(f"{folder} holds no exported model ({GRAPH} and {INPUTS}); write one with "
                                    f"`python -m stages.export --model <model folder> --out {folder}`")
        meta = read_json(folder / INPUTS)
        for modality, entry in meta["processing"].items():  # a modality of the user's: import its module first
            recorded_modality(modality, entry["settings"].get("module"), str(folder))
        processing = {m: bundled_processing(folder, m, ModalitySpec.model_validate(e["settings"]))
                      for m, e in meta["processing"].items()}
        inputs = [GraphInput(i["modality"], i["key"], tuple(i["shape"][1:]), getattr(torch, i["dtype"]))
                  for i in meta["inputs"]]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(folder / GRAPH), options, providers=["CPUExecutionProvider"])
        return cls(session, list(meta["labels"]), list(meta["modalities"]), processing, inputs)

    def probabilities(self, data: SplitData) -> torch.Tensor:
        if not len(data):
            return torch.empty(0, len(self.labels))
        feed = {spec.name: value.numpy() for spec, value in zip(self.inputs, feed_tensors(self.inputs, data))}
        (probs,) = self.session.run([OUTPUT], feed)
        return torch.from_numpy(np.asarray(probs, dtype=np.float32))

    def contributions(self, data: SplitData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """As `TorchBackend.contributions`, by whole passes of the graph with each modality's mask off."""
        return contributions_by_masking(self, data)


def contributions_by_masking(backend: "OnnxBackend", data: SplitData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probabilities of `data`, and per modality the predicted class's probability minus its probability with that
    modality's mask off (NaN where the row lacks it): one more pass per modality."""
    probs = backend.probabilities(data)
    return probs, {m: probability_drop(probs, backend.probabilities(mask_off(data, m)), data.masks[m])
                   for m in data.modalities}


Backend = TorchBackend | OnnxBackend


def load_any_for_raw_inputs(folder: Path, device: torch.device
                            ) -> tuple[torch.nn.Module, ModelSpec, dict[str, ModalitySpec]]:
    """Any saved model folder as (a module taking processor tensors, its spec, each modality's processing): an
    ensemble (`ensemble.json`), a classical baseline (`classical.json`), a compressed variant (`compression.json`)
    or a deep model."""
    if is_ensemble(folder):
        return load_ensemble_for_raw_inputs(folder, device)
    if is_classical(folder):
        return load_classical_for_raw_inputs(folder, device)
    if is_variant(folder):  # a compressed variant of the compress stage (int8, distilled, pruned)
        return load_variant_for_raw_inputs(folder, device)
    return load_for_raw_inputs(folder, device)


def load_ensemble_for_raw_inputs(folder: Path, device: torch.device
                                 ) -> tuple[EnsembleModel, ModelSpec, dict[str, ModalitySpec]]:
    """An ensemble folder (`ensemble.json`) as one model of its members (deep or classical, each by its folder
    relative to the ensemble's, each at its own temperature as it was selected), a spec naming the modalities any
    member reads, and their processing settings (each modality's from the first member reading it)."""
    ensemble = EnsembleSpec.load(folder)
    unsaved = [m.name for m in ensemble.members if not m.path]
    if unsaved:
        raise ValueError(f"{folder}: the ensemble names members {unsaved} without a model folder (written before "
                         "the classical baselines were saved as models): re-run `dvc repro baseline ensemble`, or "
                         f"predict with its single best model ({ensemble.single_best})")
    models, reads, temperatures, processing, first = [], [], [], {}, None
    for member in ensemble.members:
        model, spec, settings = load_any_for_raw_inputs(folder / member.path, device)
        models.append(model)
        reads.append(spec.modalities)
        temperatures.append(load_temperature(folder / member.path))  # 1 where none was fitted (classical)
        first = first or spec
        for modality in spec.modalities:
            processing.setdefault(modality, settings[modality])
    # What predict reads of a spec: the modalities (any member's) and the labels.
    spec = ModelSpec(list(processing), {}, first.labels, first.dim, "ensemble", 0.0, {}, {})
    return EnsembleModel(models, reads, [m.weight for m in ensemble.members], temperatures).eval(), spec, processing


def load_backend(model_dir: Path | None, onnx_dir: Path | None, device: torch.device,
                 threads: int | None = None) -> Backend:
    """The ONNX bundle in `onnx_dir` when given, else the model folder `model_dir` on PyTorch."""
    if onnx_dir is not None:
        return OnnxBackend.load(onnx_dir, threads)
    if model_dir is None:
        raise ValueError("name a model folder (--model) or an exported bundle (--onnx)")
    return TorchBackend.load(model_dir, device)

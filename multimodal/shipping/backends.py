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

from multimodal.modalities import recorded_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import bundled_processing, load_for_raw_inputs
from multimodal.shipping.graph import OUTPUT, GraphInput, feed_tensors
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json
from multimodal.training.train import predict as predict_probs

GRAPH = "model.onnx"
INPUTS = "inputs.json"  # an exported bundle's: the graph's tensors and the preprocessing of each (export.py)


@dataclass
class TorchBackend:
    """A model folder on PyTorch (`load_for_raw_inputs`: every modality from raw processor outputs)."""

    model: torch.nn.Module
    labels: list[str]
    modalities: list[str]
    processing: dict[str, ModalitySpec]
    device: torch.device

    @classmethod
    def load(cls, model_dir: Path, device: torch.device) -> "TorchBackend":
        model, spec, processing = load_for_raw_inputs(model_dir, device)
        return cls(model, list(spec.labels), list(spec.modalities), processing, device)

    def probabilities(self, data: SplitData) -> torch.Tensor:
        return predict_probs(self.model, data, max(len(data), 1), self.device)


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


Backend = TorchBackend | OnnxBackend


def load_backend(model_dir: Path | None, onnx_dir: Path | None, device: torch.device,
                 threads: int | None = None) -> Backend:
    """The ONNX bundle in `onnx_dir` when given, else the model folder `model_dir` on PyTorch."""
    if onnx_dir is not None:
        return OnnxBackend.load(onnx_dir, threads)
    if model_dir is None:
        raise ValueError("name a model folder (--model) or an exported bundle (--onnx)")
    return TorchBackend.load(model_dir, device)

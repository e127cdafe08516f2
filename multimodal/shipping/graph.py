"""The fused model as one ONNX graph: flat named tensors in (each modality's processor outputs and its presence
mask), class probabilities out, any batch size.

`MultimodalModel.forward` encodes only the rows that hold a modality (`Embedder.embed` selects them with
`nonzero`): right for training, but a data-dependent shape that an exported graph would freeze. The graph instead
encodes every row and zeroes the absent rows' embeddings with `where` (never a product: an absent row's zero inputs
may encode to anything, NaN included), which is what `embed` returns for them; in eval mode every encoder here
treats rows independently (BatchNorm reads running statistics), so the present rows get the same values. Fusion and
head are the model's own modules.

Inputs are named `<modality>.<key>` (`image.pixel_values`, `text.input_ids`, ...) and `<modality>.mask` (bool);
the one output is `probabilities` (batch, classes). `OPSET` is pinned: a graph's operators are read against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from multimodal.models.model import MultimodalModel
from multimodal.storage.dataset import SplitData

OPSET = 18  # ONNX opset of every exported graph; onnxruntime 1.32 runs opsets up to 23
OUTPUT = "probabilities"
MASK = "mask"
EXAMPLE_ROWS = 3  # rows of the example batch the graph is traced with (not 0 or 1: torch.export specialises those)


@dataclass(frozen=True)
class GraphInput:
    """One input tensor of the graph: `<modality>.<key>`, with its per-row shape (batch axis left out) and dtype."""

    modality: str
    key: str  # a processor output key, or `MASK`
    row_shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return f"{self.modality}.{self.key}"


def graph_inputs(modalities: list[str], example: SplitData) -> list[GraphInput]:
    """The graph's inputs, in order: each modality's processor outputs as `example` holds them, then the masks."""
    empty = [m for m in modalities if not example.inputs.get(m)]
    if empty:
        raise ValueError(f"no row of the example holds {empty}: the graph's input shapes come from real rows; give "
                         "rows where every modality of the model appears at least once")
    tensors = [GraphInput(m, key, tuple(value.shape[1:]), value.dtype)
               for m in modalities for key, value in example.inputs[m].items()]
    return tensors + [GraphInput(m, MASK, (), torch.bool) for m in modalities]


class GraphForward(nn.Module):
    """`model` with flat positional tensors (`graph_inputs` order) in and probabilities out."""

    def __init__(self, model: MultimodalModel, inputs: list[GraphInput], temperature: float = 1.0):
        super().__init__()
        self.model, self.inputs, self.temperature = model, inputs, float(temperature)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs: dict[str, dict[str, torch.Tensor]] = {}
        masks: dict[str, torch.Tensor] = {}
        for spec, value in zip(self.inputs, tensors):
            if spec.key == MASK:
                masks[spec.modality] = value
            else:
                inputs.setdefault(spec.modality, {})[spec.key] = value
        embedder = self.model.embedder
        z = {m: torch.where(masks[m].unsqueeze(-1), embedder.projections[m](embedder.encoders[m](**inputs[m])), 0.0)
             for m in embedder.encoders}
        fused = self.model.fusion(z, masks)  # dropout is the identity in eval mode
        logits = fused if self.model.head is None else self.model.head(fused)
        return torch.softmax(logits.float() / self.temperature, dim=-1)  # calibrated, as `predict` on PyTorch


def feed_tensors(inputs: list[GraphInput], data: SplitData) -> list[torch.Tensor]:
    """The graph's input tensors for the rows of `data` (in memory), zeros for a modality no row holds."""
    n, out = len(data), []
    for spec in inputs:
        if spec.key == MASK:
            value = data.masks[spec.modality]
        else:
            value = data.inputs.get(spec.modality, {}).get(spec.key)
            if value is None:
                value = torch.zeros((n, *spec.row_shape), dtype=spec.dtype)
        out.append(value.to(spec.dtype))
    return out


def export_graph(model: MultimodalModel, modalities: list[str], example: SplitData, path: Path,
                 temperature: float = 1.0) -> list[GraphInput]:
    """Write `model` (eval mode, CPU) as an ONNX graph to `path` (one file, weights inside), its probabilities at
    `temperature` (the model's calibration, `temperature.json`); return its inputs.

    The torch.export-based exporter (`dynamo=True`): the TorchScript one cannot translate the in-place mask update
    of the attention fusion (`aten::__iand_`), and it is deprecated in torch 2.x.
    """
    rows = example.batch(torch.arange(EXAMPLE_ROWS) % len(example))
    inputs = graph_inputs(modalities, rows)
    args = tuple(feed_tensors(inputs, rows))
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        GraphForward(model.eval(), inputs, temperature), args, dynamo=True, opset_version=OPSET, verbose=False,
        input_names=[i.name for i in inputs], output_names=[OUTPUT],
        dynamic_shapes=(tuple({0: batch} for _ in args),))
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return inputs

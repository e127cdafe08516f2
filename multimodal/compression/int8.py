"""Int8 weight-only quantization of Linear, Conv2d and Embedding layers: per-output-channel symmetric scales;
embedding tables optionally at 4 bits in groups (`embedding_bits: 4`).

torch.ao.quantization (`quantize_dynamic`) is deprecated in torch 2.13 in favour of torchao, which is not a
dependency here, and its packed weights are not plain tensors that safetensors can hold. So the weights are stored
as int8 tensors plus float32 scales (one per output channel, or per row of an embedding table), saved in
safetensors, and dequantized at run time: a quarter of the weight bytes, the same arithmetic as before up to the
rounding of each weight. On this CPU build `torch._int_mm` and `torch._weight_int8pack_mm` on float32 inputs were
40-60x slower than the float matmul (measured 2026-12-07), so the matmul itself stays float32.

An embedding table is the one layer that a forward pass reads a few rows of (the tokens present), and in the demo
the biggest (MiniLM's 30,522 x 384 word embeddings, half its weights): at 4 bits with a float32 scale per group of
`group_size` values in a row it takes 0.5 + 4/group_size bytes per weight instead of 1, and only the rows looked up
are unpacked.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

KINDS = {"linear": nn.Linear, "conv": nn.Conv2d, "embedding": nn.Embedding}


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and a float32 scale per row (output channel) with `weight ≈ values * scale`."""
    flat = weight.detach().float().reshape(len(weight), -1)
    scale = (flat.abs().amax(dim=1) / 127).clamp_min(1e-12)
    values = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.reshape(weight.shape), scale


class Int8Weight(nn.Module):
    """Holds `weight_int8` and `scale` as buffers (what the state dict saves); `weight` is their float product."""

    def _store(self, shape: torch.Size) -> None:
        self.register_buffer("weight_int8", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(shape[0]))

    def set_from(self, weight: torch.Tensor) -> None:
        self.weight_int8, self.scale = quantize_weight(weight)

    @property
    def weight(self) -> torch.Tensor:  # read by code that reaches into a layer (attention's out_proj)
        view = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.scale.view(view)


class Int8Linear(Int8Weight):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._store(layer.weight.shape)
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8Conv2d(Int8Weight):
    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"int8 Conv2d supports padding_mode='zeros' only, got {layer.padding_mode!r}")
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self._store(layer.weight.shape)
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Int8Embedding(Int8Weight):
    def __init__(self, layer: nn.Embedding):
        super().__init__()
        if layer.max_norm is not None:
            raise ValueError("int8 Embedding does not support max_norm (it renormalises the table in place)")
        self.padding_idx = layer.padding_idx
        self._store(layer.weight.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Dequantize only the rows looked up: the table stays int8 in memory.
        return self.weight_int8[ids].float() * self.scale[ids].unsqueeze(-1)


def quantize_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit values of a (rows, cols) table, two per uint8 (low nibble first), and a float32 scale per group of
    `group_size` values of a row, with `weight ≈ (nibble - 8) * scale`, nibbles in 1..15 (symmetric: -7..7)."""
    rows, cols = weight.shape
    groups = weight.detach().float().reshape(rows, cols // group_size, group_size)
    scale = (groups.abs().amax(dim=-1) / 7).clamp_min(1e-12)
    nibbles = (torch.round(groups / scale[..., None]).clamp(-7, 7) + 8).to(torch.uint8).reshape(rows, cols)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale


def dequantize_groups(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float rows of `quantize_groups`' output (any leading shape: a lookup of some rows)."""
    # Arithmetic, not bit operations: ONNX's BitShift takes unsigned types only and the exporter mixed uint8 and
    # int8 in the stack (onnxruntime refused the graph); 0..255 is exact in float32.
    values = packed.float()
    high = torch.floor(values / 16)
    nibbles = torch.stack([values - 16 * high, high], dim=-1).flatten(-2) - 8
    grouped = nibbles.unflatten(-1, (scale.shape[-1], -1)) * scale.unsqueeze(-1)
    return grouped.flatten(-2)


class Int4Embedding(nn.Module):
    """An embedding table at 4 bits per weight (`quantize_groups`); buffers `weight_int4` and `scale`."""

    def __init__(self, layer: nn.Embedding, group_size: int):
        super().__init__()
        if layer.max_norm is not None:
            raise ValueError("4-bit Embedding does not support max_norm (it renormalises the table in place)")
        rows, cols = layer.weight.shape
        self.padding_idx = layer.padding_idx
        self.register_buffer("weight_int4", torch.zeros(rows, cols // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, cols // group_size))

    @staticmethod
    def fits(layer: nn.Module, group_size: int) -> bool:
        """Whether `layer` is an embedding table whose rows split into whole groups of an even size."""
        return isinstance(layer, nn.Embedding) and group_size % 2 == 0 and layer.embedding_dim % group_size == 0

    def set_from(self, weight: torch.Tensor) -> None:
        self.weight_int4, self.scale = quantize_groups(weight, weight.shape[1] // self.scale.shape[1])

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_groups(self.weight_int4, self.scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_groups(self.weight_int4[ids], self.scale[ids])


INT8 = {nn.Linear: Int8Linear, nn.Conv2d: Int8Conv2d, nn.Embedding: Int8Embedding}


def quantizable(model: nn.Module, kinds: list[str], min_params: int) -> list[str]:
    """Names of the layers of `kinds` (keys of KINDS) in `model` with at least `min_params` weights."""
    wanted = tuple(KINDS[k] for k in kinds)
    return [name for name, layer in model.named_modules()
            if isinstance(layer, wanted) and type(layer) in (*INT8, nn.modules.linear.NonDynamicallyQuantizableLinear)
            and layer.weight.numel() >= min_params]


def _base(layer: nn.Module) -> type:
    return nn.Linear if isinstance(layer, nn.Linear) else type(layer)


def to_int8(model: nn.Module, names: list[str], quantize: bool = True, embedding_bits: int = 8,
            group_size: int = 32) -> nn.Module:
    """`model` with the layers `names` replaced by int8 ones, in place (embedding tables at 4 bits where
    `embedding_bits` is 4 and their rows split into groups of `group_size`); `quantize=False` gives empty layers
    (the shape of a saved quantized model, whose state dict then fills them)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if embedding_bits == 4 and Int4Embedding.fits(layer, group_size):
            replacement = Int4Embedding(layer, group_size)
        else:
            replacement = INT8[_base(layer)](layer)
        if quantize:
            replacement.set_from(layer.weight)
        setattr(parent, child, replacement)
    return model

"""Magnitude pruning (torch.nn.utils.prune, L1 unstructured) and a sparse encoding of the pruned weights.

A pruned weight saved densely is as large as before: its zeros take four bytes each. So each pruned tensor is
saved as a bitmask of its non-zero positions (one bit per weight, uint8) and the float32 values at those
positions, both plain tensors in the same safetensors file: (1 - sparsity) * 4 + 1/8 bytes per weight.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Linear, nn.Conv2d)
MASK, VALUES = ".nonzero_bits", ".nonzero_values"  # suffixes of a sparse tensor's two parts in the state dict


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(layer, "weight") of every Linear and Conv2d of `model`: what pruning considers."""
    # Exact types: attention's out_proj (a Linear subclass) is read through its `weight` by the attention module,
    # never called, so a pruning hook there would not apply the mask.
    return [(layer, "weight") for layer in model.modules() if type(layer) in PRUNABLE]


def apply_pruning(model: nn.Module, sparsity: float, scope: Literal["global", "layer"]) -> None:
    """Mask the smallest-magnitude share `sparsity` of the weights, over all layers at once (`global`) or in each
    layer (`layer`). The masks stay as forward hooks until `make_permanent`: fine-tuning keeps pruned weights at 0."""
    targets = prunable(model)
    if not targets:
        raise ValueError("the model has no Linear or Conv2d layer to prune")
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for layer, name in targets:
            prune.l1_unstructured(layer, name, amount=sparsity)


def make_permanent(model: nn.Module) -> None:
    """Fold each mask into its weight (`prune.remove`): plain parameters again, the zeros kept."""
    for layer, name in prunable(model):
        if prune.is_pruned(layer) and hasattr(layer, name + "_orig"):
            prune.remove(layer, name)


def sparse_tensor_names(model: nn.Module) -> list[str]:
    """State-dict names of the weights pruning considers: what is stored sparse."""
    return [f"{name}.weight" for name, layer in model.named_modules() if type(layer) in PRUNABLE]


def sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the weights pruning considers."""
    weights = [layer.weight for layer, _ in prunable(model)]
    return float(sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A flat bool tensor as uint8 bytes, eight positions a byte (the last one padded with zeros)."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % 8)]).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].bool()


def encode(state: dict[str, torch.Tensor], names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """`state` with each tensor of `names` replaced by its bitmask and non-zero values; and the shapes of those."""
    out, shapes = dict(state), {}
    for name in names:
        tensor = out.pop(name)
        nonzero = tensor != 0
        out[name + MASK], out[name + VALUES] = pack_bits(nonzero), tensor[nonzero].contiguous()
        shapes[name] = list(tensor.shape)
    return out, shapes


def decode(state: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The dense state dict again from `encode`'s output."""
    out = dict(state)
    for name, shape in shapes.items():
        numel = int(torch.Size(shape).numel())
        mask, values = unpack_bits(out.pop(name + MASK), numel), out.pop(name + VALUES)
        if int(mask.sum()) != len(values):
            raise ValueError(f"{name}: its bitmask marks {int(mask.sum())} non-zero weights but {len(values)} values "
                             "are stored; the file is damaged: re-run `dvc repro compress`")
        dense = values.new_zeros(numel)
        dense[mask] = values
        out[name] = dense.view(shape)
    return out

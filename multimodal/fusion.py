"""The fusion zoo. Each takes projected embeddings {modality: (B, D)} and presence masks {modality: (B,)}.

Every fusion ignores absent modalities through the masks, so any subset of modalities can be fed at inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _stack(z: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], order: list[str]):
    values = torch.stack([z[m] for m in order], dim=1)  # (B, M, D)
    present = torch.stack([masks[m] for m in order], dim=1)  # (B, M)
    return values, present


class ConcatFusion(nn.Module):
    """Early fusion: concatenation of (masked) embeddings plus the presence bits."""

    def __init__(self, modalities: list[str], dim: int):
        super().__init__()
        self.order, self.out_dim = modalities, len(modalities) * (dim + 1)

    def forward(self, z, masks):
        values, present = _stack(z, masks, self.order)
        values = values * present.unsqueeze(-1).to(values.dtype)
        return torch.cat([values.flatten(1), present.to(values.dtype)], dim=1)


class GatedFusion(nn.Module):
    """Learned per-sample weights (softmax over present modalities) for a weighted sum."""

    def __init__(self, modalities: list[str], dim: int):
        super().__init__()
        self.order, self.out_dim = modalities, dim
        self.gate = nn.Linear(dim, 1)

    def forward(self, z, masks):
        values, present = _stack(z, masks, self.order)
        scores = self.gate(values).squeeze(-1).masked_fill(~present, float("-inf"))
        # A row with no modality at all would give NaN; its weights become zeros instead.
        weights = torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)
        return (weights.unsqueeze(-1) * values).sum(dim=1)


class AttentionFusion(nn.Module):
    """Cross-modal attention: a small transformer over one token per modality, mean over present tokens."""

    def __init__(self, modalities: list[str], dim: int, heads: int = 4, layers: int = 1):
        super().__init__()
        self.order, self.out_dim = modalities, dim
        heads = math.gcd(heads, dim)  # attention needs heads to divide the width; any align.dim works
        self.modality_embedding = nn.Parameter(torch.zeros(len(modalities), dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, z, masks):
        values, present = _stack(z, masks, self.order)
        # Keep at least one key per row unmasked so attention stays defined; its output is masked below.
        key_mask = ~present
        key_mask[:, 0] &= present.any(dim=1)
        out = self.encoder(values + self.modality_embedding, src_key_padding_mask=key_mask)
        weights = present.unsqueeze(-1).to(out.dtype)
        return (out * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion}


def build_fusion(kind: str, modalities: list[str], dim: int) -> nn.Module:
    try:
        return FUSIONS[kind](modalities, dim)
    except KeyError:
        raise ValueError(f"unknown fusion {kind!r}; choose one of {sorted(FUSIONS)}") from None

"""The fusion zoo. Each takes projected embeddings {modality: (B, D)} and presence masks {modality: (B,)}.

Every fusion ignores absent modalities through the masks, so any subset of modalities can be fed at inference,
and a row with no modality at all gives finite outputs. A fusion with `produces_logits = True` (late fusion)
returns class logits itself, so the model puts no shared head after it. A fusion's architecture knobs (`knobs`,
keyword arguments named as in params `tune.fixed`) have no defaults: `fusion_knobs` takes them from a TrainConfig,
and a saved model records them (`ModelSpec.fusion_knobs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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

    knobs = ("attention_heads", "attention_layers")

    def __init__(self, modalities: list[str], dim: int, *, attention_heads: int, attention_layers: int):
        super().__init__()
        self.order, self.out_dim = modalities, dim
        heads = math.gcd(attention_heads, dim)  # attention needs heads to divide the width; any align.dim works
        self.modality_embedding = nn.Parameter(torch.zeros(len(modalities), dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)

    def forward(self, z, masks):
        values, present = _stack(z, masks, self.order)
        # Keep at least one key per row unmasked so attention stays defined; its output is masked below.
        key_mask = ~present
        key_mask[:, 0] &= present.any(dim=1)
        out = self.encoder(values + self.modality_embedding, src_key_padding_mask=key_mask)
        weights = present.unsqueeze(-1).to(out.dtype)
        return (out * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LateFusion(nn.Module):
    """Late fusion: one linear classifier per modality, logits averaged over the modalities present in each row."""

    produces_logits = True

    def __init__(self, modalities: list[str], dim: int, n_classes: int):
        super().__init__()
        self.order, self.out_dim = modalities, n_classes
        self.classifiers = nn.ModuleDict({m: nn.Linear(dim, n_classes) for m in modalities})

    def forward(self, z, masks):
        logits = torch.stack([self.classifiers[m](z[m]) for m in self.order], dim=1)  # (B, M, C)
        present = torch.stack([masks[m] for m in self.order], dim=1).unsqueeze(-1).to(logits.dtype)
        # where(), not a product: an absent row's logits must not leak even when they are inf/NaN.
        summed = torch.where(present.bool(), logits, torch.zeros_like(logits)).sum(dim=1)
        return summed / present.sum(dim=1).clamp(min=1.0)  # a row with nothing present gets zero logits


class WeightedFusion(nn.Module):
    """One learned scalar per modality; softmax over the modalities present in each row, then a weighted sum."""

    def __init__(self, modalities: list[str], dim: int):
        super().__init__()
        self.order, self.out_dim = modalities, dim
        self.scores = nn.Parameter(torch.zeros(len(modalities)))  # equal weights at the start

    def forward(self, z, masks):
        values, present = _stack(z, masks, self.order)
        scores = self.scores.to(values.dtype).expand(present.shape).masked_fill(~present, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=1), nan=0.0)  # no modality: all-zero weights
        values = torch.where(present.unsqueeze(-1), values, torch.zeros_like(values))
        return (weights.unsqueeze(-1) * values).sum(dim=1)


class TensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018, https://arxiv.org/abs/1806.00064).

    Each modality vector gets a constant 1 appended; rank-r modality-specific factors map it to (r, D); the
    factors are multiplied elementwise across modalities and summed over the rank. An absent modality is fed
    [1, 0, ..., 0], so only its bias path takes part and its values cannot matter.
    """

    knobs = ("tensor_rank",)

    def __init__(self, modalities: list[str], dim: int, *, tensor_rank: int):
        super().__init__()
        self.order, self.out_dim, self.rank = modalities, dim, tensor_rank
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.empty(tensor_rank, dim + 1, dim)) for m in modalities})
        self.rank_weights = nn.Parameter(torch.empty(1, tensor_rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        for factor in self.factors.values():
            nn.init.xavier_normal_(factor)
        nn.init.xavier_normal_(self.rank_weights)

    def forward(self, z, masks):
        product = None
        for m in self.order:
            value = torch.where(masks[m].unsqueeze(-1), z[m], torch.zeros_like(z[m]))
            with_one = torch.cat([torch.ones_like(value[:, :1]), value], dim=1)  # (B, D + 1)
            factor = torch.einsum("bi,rio->bro", with_one, self.factors[m].to(value.dtype))  # (B, r, D)
            product = factor if product is None else product * factor
        return torch.einsum("kr,bro->bo", self.rank_weights.to(product.dtype), product) + self.bias


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion, "late": LateFusion,
           "weighted": WeightedFusion, "tensor": TensorFusion}


def fusion_class(kind: str) -> type[nn.Module]:
    try:
        return FUSIONS[kind]
    except KeyError:
        raise ValueError(f"unknown fusion {kind!r}; choose one of {sorted(FUSIONS)}") from None


def fusion_knobs(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture knobs fusion `kind` reads, taken from `values` (a TrainConfig's fields)."""
    return {knob: values[knob] for knob in getattr(fusion_class(kind), "knobs", ())}


def build_fusion(kind: str, modalities: list[str], dim: int, n_classes: int | None = None, *,
                 knobs: Mapping[str, Any]) -> nn.Module:
    """A fusion by name with exactly its `knobs`; `n_classes` is needed by the fusions that produce logits
    themselves (`late`)."""
    cls = fusion_class(kind)
    wanted = set(getattr(cls, "knobs", ()))
    if set(knobs) != wanted:
        raise ValueError(f"fusion {kind!r} takes the knobs {sorted(wanted)}, got {sorted(knobs)}")
    if getattr(cls, "produces_logits", False):
        if n_classes is None:
            raise ValueError(f"fusion {kind!r} produces logits and needs n_classes")
        return cls(modalities, dim, n_classes, **knobs)
    return cls(modalities, dim, **knobs)

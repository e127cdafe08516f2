"""The `compress` params section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from multimodal.compression.int8 import KINDS
from multimodal.pipeline.params import Strict


class Int8(Strict):
    """Int8 weights of the chosen model (multimodal.compression.int8), and of the distilled student."""

    layers: list[Literal[tuple(KINDS)]] = Field(min_length=1)  # layer kinds quantized
    min_params: int = Field(ge=1)  # smaller layers stay float32 (norms, tiny heads cost nothing)
    embedding_bits: Literal[4, 8]  # 4: embedding tables at 4 bits, a float32 scale per group of a row
    group_size: int = Field(ge=2)  # values per scale at 4 bits (even; a table's row a multiple of it)


class Distill(Strict):
    """A smaller student trained on the teacher's softened probabilities (multimodal.compression.distill)."""

    epochs: int = Field(ge=1)  # the best epoch on validation is kept
    lr: float = Field(gt=0)
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1)  # weight of the soft (teacher) term; 1 - alpha on the labels
    # {modality: HF config keys overriding the teacher encoder's}, e.g. {text: {num_hidden_layers: 3}}.
    encoders: dict[str, dict[str, Any]]

    @field_validator("encoders")
    @classmethod
    def _some_smaller(cls, encoders: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not any(encoders.values()):
            raise ValueError("compress.distill.encoders: give at least one smaller encoder, e.g. "
                             "{text: {num_hidden_layers: 3}}; with none the student is the teacher")
        return encoders


class Prune(Strict):
    """Magnitude pruning at each sparsity, then a short fine-tuning (multimodal.compression.sparse)."""

    sparsities: list[float] = Field(min_length=1)  # share of the Linear and Conv2d weights set to zero
    scope: Literal["global", "layer"]  # global: one threshold over all layers; layer: the share in each
    epochs: int = Field(ge=0)  # fine-tuning epochs after pruning (0: none)
    lr: float = Field(gt=0)

    @field_validator("sparsities")
    @classmethod
    def _shares(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"compress.prune.sparsities: distinct shares strictly between 0 and 1, got {values}")
        return values


class Compress(Strict):
    variants: list[Literal["int8", "distilled", "distilled_int8", "pruned"]] = Field(min_length=1)
    batch_size: int = Field(ge=1)  # scoring batches
    int8: Int8
    distill: Distill
    prune: Prune

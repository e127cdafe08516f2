"""Images: PIL decode to RGB, a ViT-style image processor, a ViT encoder (pretrained or config-built)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, ViTImageProcessorPil

from multimodal.config import ModalitySpec
from multimodal.manifest import resolve_inside
from multimodal.modalities.base import Modality, config_built, load_pretrained


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> Image.Image:
    with Image.open(resolve_inside(root, cell)) as image:
        return image.convert("RGB")  # HF processors expect 3 channels; grayscale is replicated


def build_processor(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoImageProcessor, spec.pretrained, spec.revision, weights=False)
    size = int(spec.options["image_size"])
    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def process(processor, items: Sequence[Image.Image], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    return dict(processor(images=list(items), return_tensors="pt"))


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    # AutoModel (not ViTModel(add_pooling_layer=False)) so a saved model rebuilds from its config identically.
    return config_built(spec, "vit", image_size=int(spec.options["image_size"]), num_channels=3)


IMAGE = Modality("image", load, build_processor, process, build_encoder, options=("image_size",), checkpoints=())

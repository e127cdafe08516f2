"""Images: PIL decode to RGB, a ViT-style image processor, a ViT encoder (pretrained or config-built)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, ViTImageProcessorPil

from multimodal.augment import gaussian_noise, random_affine, random_cutout
from multimodal.config import ModalitySpec
from multimodal.manifest import resolve_inside
from multimodal.modalities.base import Modality, config_built, load_pretrained, standardize


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


def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator, strength: float, *, affine_degrees: float,
            translate: float, scale: float, noise: float, cutout: float) -> dict[str, torch.Tensor]:
    """Random affine (rotation, translation, zoom), then a cutout hole, then Gaussian noise (std in the
    processor's normalised units), every magnitude times `strength`."""
    x = inputs["pixel_values"]
    x = random_affine(x, affine_degrees * strength, translate * strength, min(scale * strength, 0.9), generator)
    x = random_cutout(x, min(cutout * strength, 1.0), generator)
    return {**inputs, "pixel_values": gaussian_noise(x, noise * strength, generator)}


def per_image(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each image to zero mean, unit variance over its channels and pixels: contrast and brightness drop out."""
    return {**inputs, "pixel_values": standardize(inputs["pixel_values"], (1, 2, 3))}


IMAGE = Modality("image", load, build_processor, process, build_encoder, options=("image_size",), checkpoints=(),
                 augment=augment, normalizations={"per_image": per_image})

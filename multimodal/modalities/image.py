"""Images: a path cell; probed from the header (Pillow) before decoding, decoded to RGB, a ViT-style image processor
(size `image_size`, mean/std 0.5), any transformers vision architecture (params `config.model_type`; ViT when none)
or a pretrained checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transformers import AutoImageProcessor, AutoModel, ViTImageProcessorPil

from multimodal.modalities.base import Modality, config_built, load_pretrained, standardize
from multimodal.modalities.checks import Check, between, one_of
from multimodal.modalities.spec import ModalitySpec
from multimodal.modalities.transforms import gaussian_noise, random_affine, random_cutout
from multimodal.storage.codecs import Stored, compact_pixels
from multimodal.storage.paths import resolve_inside


class ImageChecks(BaseModel):
    """params `validate.modalities.image`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_size: int = Field(ge=1)  # px, width and height alike
    max_size: int = Field(ge=1)
    max_pixels: int = Field(ge=1)  # width x height from the header, refused before the pixels are decoded
    modes: list[str] | None  # None: any mode Pillow decodes (preprocess converts to RGB)

    @field_validator("modes")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("an empty list; use null to allow any mode")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "ImageChecks":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        return self


PROFILE_FIELDS = {"width": "Int64", "height": "Int64", "mode": "object", "channels": "Int64"}


def probe(source: BinaryIO, checks: ImageChecks) -> dict[str, Any]:
    """Header facts, then the pixels decoded (which catches truncation); a picture beyond `max_pixels` is refused
    from its header, before a decoder allocates it."""
    with Image.open(source) as image:
        pixels = image.width * image.height
        if pixels > checks.max_pixels:
            raise ValueError(f"{image.width}x{image.height} = {pixels} pixels; allowed {checks.max_pixels} "
                             "(validate.modalities.image.max_pixels), not decoded")
        image.load()
        return {"width": image.width, "height": image.height, "mode": image.mode, "channels": len(image.getbands())}


def row_checks(ex: Any, checks: ImageChecks) -> list[Check]:
    low, high = checks.min_size, checks.max_size
    out = [between(ex, "image", side, low, high, f"image {side} is {low}..{high} px",
                   f"image {side} is {{image_{side}}} px; allowed {low}..{high}") for side in ("width", "height")]
    if checks.modes is not None:
        out.append(one_of(ex, "image", "mode", checks.modes, f"image mode is one of {checks.modes}",
                          f"image mode {{image_mode!r}} is not one of {checks.modes}"))
    return out


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> Image.Image:
    with Image.open(resolve_inside(root, cell)) as image:
        return image.convert("RGB")  # HF processors expect 3 channels; grayscale is replicated


def build_processor(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoImageProcessor, spec.pretrained, spec.revision, weights=False)
    size = int(spec.options["image_size"])
    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def store(processor, items: Sequence[Image.Image], spec: ModalitySpec) -> Stored:
    """uint8 pixels before the processor's rescale and normalisation (a quarter of float32), where it allows."""
    return compact_pixels(processor, lambda **flags: processor(images=list(items), return_tensors="pt",
                                                               **flags)["pixel_values"])


def process(processor, items: Sequence[Image.Image], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    # Decoded from the stored form, so a prediction reads exactly the values training read.
    return store(processor, items, spec).decoded()


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    # AutoModel (not ViTModel(add_pooling_layer=False)) so a saved model rebuilds from its config identically.
    return config_built(spec, "vit", image_size=int(spec.options["image_size"]), num_channels=3)


class ImageAugment(BaseModel):
    """params `tune.fixed.augment.image`; each magnitude is multiplied by augment_strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    affine_degrees: float = Field(ge=0, le=180)  # rotation drawn in ±degrees
    translate: float = Field(ge=0, le=1)  # shift drawn in ±translate x the side
    scale: float = Field(ge=0, lt=1)  # zoom drawn in 1 ± scale
    noise: float = Field(ge=0)  # std of Gaussian noise, in the processor's normalised pixel units
    cutout: float = Field(ge=0, le=1)  # side of one zeroed square, x the shorter side


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


# --- test-time corruptions: evaluate's noise robustness curves (multimodal.evaluation.robustness)
# --------------------------
# Each takes the processor outputs of a batch, a level (0: the inputs unchanged; larger: stronger) and a seeded
# generator. With the same generator state a larger level corrupts more of the same draw, so a curve is smooth.


def corrupt_noise(inputs: dict[str, torch.Tensor], level: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussian pixel noise of standard deviation `level`, in the processor's normalised units."""
    if level <= 0:
        return inputs
    return {**inputs, "pixel_values": gaussian_noise(inputs["pixel_values"], level, generator)}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) images blurred by a Gaussian of std `sigma` pixels (separable, kernel +-3 sigma, edges
    reflected)."""
    radius = min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1)  # reflection padding needs radius < side
    if sigma <= 0 or radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def corrupt_blur(inputs: dict[str, torch.Tensor], level: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussian blur of std `level` pixels at the processed resolution (no randomness)."""
    return inputs if level <= 0 else {**inputs, "pixel_values": gaussian_blur(inputs["pixel_values"], level)}


def corrupt_occlusion(inputs: dict[str, torch.Tensor], level: float,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One square per image set to 0 (mid-grey for a mean-0.5 processor), of side `level` x the shorter side,
    centred anywhere (clipped at the border)."""
    if level <= 0:
        return inputs
    return {**inputs, "pixel_values": random_cutout(inputs["pixel_values"], min(level, 1.0), generator)}


# Kind -> function; the levels of each curve are params `evaluate.corruptions.image.<kind>`.
CORRUPTIONS = {"noise": corrupt_noise, "blur": corrupt_blur, "occlusion": corrupt_occlusion}


MODALITY = Modality(
    name="image", reads_file=True, probe=probe, profile_fields=PROFILE_FIELDS, checks=ImageChecks,
    row_checks=row_checks, load=load, build_processor=build_processor, process=process, store=store,
    build_encoder=build_encoder, options=("image_size",), augment=augment, augment_knobs=ImageAugment,
    normalizations={"per_image": per_image}, corruptions=CORRUPTIONS)

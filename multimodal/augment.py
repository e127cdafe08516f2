"""Training-time augmentation: seeded, batched transforms of the cached processor tensors.

Where it runs, and why. Inside the training loop (`multimodal.train.fit`), on each training mini-batch of the
tensors `preprocess` cached (image `pixel_values` (B, 3, H, W), audio log-mel `input_values` (B, frames, mel),
text `input_ids` / `attention_mask`), on the training device, just before the forward pass:

- a fresh draw every epoch, where augmented copies made at preprocess would be a few fixed variants that
  multiply disk, preprocess time and the DVC cache;
- the train split only, by construction: validation, `evaluate` and prediction never call it;
- batched tensor operations on the device (the GPU when training runs there); nothing decoded again;
- deterministic: every draw derives from `fit`'s seeded `torch.Generator` (one seed per batch for a generator on
  the device), whose state the training checkpoints save, so a resumed run continues identically. kornia's
  augmentations sample from torch's global RNG, which also drives dropout, hence the few primitives below
  (`affine_grid` / `grid_sample` for the affine).

The price: only transforms of processor outputs (no waveform speed or pitch change, no re-crop of the original
image); those need the raw item, i.e. preprocess-time copies.

Not augmented: rows lacking a modality (they stay zeros) and modalities read as features cached by `align`
(`align.freeze`, every modality under the `frozen` strategy): no encoder sees their input while training.

Each modality owns its transform (`Modality.augment` in `multimodal/modalities/<m>.py`), composed of the
primitives below; its knobs are `tune.fixed.augment.<m>` and `augment_strength` scales every magnitude (0: off).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from multimodal.dataset import SplitData

logger = logging.getLogger(__name__)


# --- primitives: (B, ...) tensors, one independent draw per sample ------------------------------------------------


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped to broadcast over the sample dimensions of `x`."""
    return values.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def band_mask(x: torch.Tensor, axis: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one band per sample along `axis`: width uniform in 0..max_width, start uniform (SpecAugment)."""
    length, batch = x.shape[axis], x.shape[0]
    max_width = min(int(max_width), length)
    if max_width <= 0:
        return x
    width = torch.randint(0, max_width + 1, (batch,), generator=generator, device=generator.device)
    start = (torch.rand(batch, generator=generator, device=generator.device) * (length - width + 1)).long()
    position = torch.arange(length, device=x.device)
    band = (position >= start[:, None].to(x.device)) & (position < (start + width)[:, None].to(x.device))
    shape = [batch] + [1] * (x.dim() - 1)
    shape[axis] = length
    return x.masked_fill(band.view(shape), 0.0)


def roll(x: torch.Tensor, axis: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Circular shift of each sample along `axis` by an integer uniform in [-max_shift, max_shift]."""
    length = x.shape[axis]
    max_shift = min(int(max_shift), length - 1)
    if max_shift <= 0:
        return x
    shift = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=generator, device=generator.device)
    moved = x.movedim(axis, 1)
    index = (torch.arange(length, device=x.device) - shift[:, None].to(x.device)) % length
    index = index.view(*index.shape, *[1] * (moved.dim() - 2)).expand_as(moved)
    return moved.gather(1, index).movedim(1, axis)


def noise_at_snr(x: torch.Tensor, snr_db: tuple[float, float], amplitude: float, dims: tuple[int, ...],
                 generator: torch.Generator, where: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian noise at a signal-to-noise ratio drawn per sample in `snr_db`, the signal being each sample's
    standard deviation over `dims`; `amplitude` scales the noise (the augmentation strength). With `where` (a bool
    mask broadcastable to `x`) the signal is measured and the noise added there only."""
    low, high = snr_db
    snr = uniform(x.shape[0], low, high, generator).to(x.device)
    weight = torch.ones_like(x) if where is None else where.to(x.dtype).expand_as(x)
    count = weight.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * weight).sum(dim=dims, keepdim=True) / count
    signal = (((x - mean) ** 2 * weight).sum(dim=dims, keepdim=True) / count).sqrt()
    sigma = amplitude * signal * per_sample(10 ** (-snr / 20), x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return x + sigma * noise * weight


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    if std <= 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def random_affine(x: torch.Tensor, degrees: float, translate: float, scale: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Rotation in ±degrees, translation in ±translate of each side, zoom in 1±scale, per (B, C, H, W) image.

    Pixels that come from outside the frame repeat the border (a constant fill would add an edge of its own).
    """
    if degrees <= 0 and translate <= 0 and scale <= 0:
        return x
    batch, _, height, width = x.shape
    angle = uniform(batch, -degrees, degrees, generator) * math.pi / 180
    zoom = uniform(batch, 1 - scale, 1 + scale, generator)
    # affine_grid works in [-1, 1] coordinates per axis: a shift of `t` sides is 2t, and a rotation of the
    # picture (not of the unit square) needs the aspect ratio.
    tx, ty = uniform(batch, -translate, translate, generator) * 2, uniform(batch, -translate, translate, generator) * 2
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin * height / width, tx], dim=1),
                         torch.stack([sin * width / height, cos, ty], dim=1)], dim=1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_cutout(x: torch.Tensor, size: float, generator: torch.Generator) -> torch.Tensor:
    """Zero one square per (B, C, H, W) image, of side `size` x the shorter side, centred anywhere (clipped)."""
    batch, _, height, width = x.shape
    side = round(size * min(height, width))
    if side <= 0:
        return x
    cy = torch.randint(0, height, (batch,), generator=generator, device=generator.device).to(x.device)
    cx = torch.randint(0, width, (batch,), generator=generator, device=generator.device).to(x.device)
    rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    top, left = (cy - side // 2)[:, None], (cx - side // 2)[:, None]
    hole = (((rows >= top) & (rows < top + side))[:, :, None]) & (((cols >= left) & (cols < left + side))[:, None, :])
    return x.masked_fill(hole[:, None], 0.0)


# --- the training-loop side ---------------------------------------------------------------------------------------


class Augmenter:
    """Augments the training batches of `fit`: `augment(batch, generator)` -> a new batch (inputs not modified).

    `settings` is `{modality: {knob: value}}` (`tune.fixed.augment`), `strength` scales every magnitude.
    """

    def __init__(self, settings: Mapping[str, Mapping[str, Any]], strength: float, train: SplitData):
        from multimodal.modalities import get_modality  # the modality modules import the primitives above

        self.strength = float(strength)
        self.transforms = {}
        if self.strength <= 0:
            return
        skipped = []
        for modality, inputs in train.inputs.items():
            knobs = settings.get(modality)
            if not knobs or not inputs or "features" in inputs:
                skipped.append(modality)
                continue
            transform = get_modality(modality).augment
            if transform is None:
                raise ValueError(f"augment.{modality}: the {modality} modality has no augmentation; remove the key")
            try:  # the knobs are the transform's keyword arguments: a typo or a missing one fails now
                inspect.signature(transform).bind(inputs, None, self.strength, **knobs)
            except TypeError as err:
                raise ValueError(f"augment.{modality}: {err}") from None
            self.transforms[modality] = (transform, dict(knobs))
        logger.info("augmentation (strength %g): %s; not augmented: %s (cached features, no settings or absent)",
                    self.strength, sorted(self.transforms) or "none", sorted(skipped) or "none")

    def __call__(self, batch: SplitData, generator: torch.Generator) -> SplitData:
        if not self.transforms:
            return batch  # no draw at all: a run without augmentation consumes the generator as before
        device = batch.labels.device
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        local = torch.Generator(device=device).manual_seed(seed)
        inputs = dict(batch.inputs)
        for modality, (transform, knobs) in self.transforms.items():
            original = batch.inputs[modality]
            changed = transform(original, local, self.strength, **knobs)
            present = batch.masks[modality]
            # Rows lacking the modality keep their zeros (the mask hides them, and encoders may skip them).
            inputs[modality] = {k: torch.where(present.view(-1, *[1] * (v.dim() - 1)), changed[k], v)
                                for k, v in original.items()}
        return SplitData(batch.sample_ids, batch.labels, inputs, batch.masks)

"""Augmentation primitives the modality modules compose their `Modality.augment` from: batched, seeded tensor ops.

(B, ...) tensors, one independent draw per sample, every draw from the `torch.Generator` passed in (never torch's
global RNG, which also drives dropout). Why augmentation runs on cached processor tensors inside the training loop:
`multimodal.training.augment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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

"""Compact stored forms of processor outputs, decoded on read; each shard records its codecs in its metadata.

- `PixelCodec`: image pixels as uint8 *before* the processor's rescale and normalisation, decoded by the per-channel
  affine `value = u8 * rescale_factor / std - mean / std` (4x smaller than float32). A modality declares it through
  its `Modality.store` (see `compact_pixels`); the codec holds the processor's own factors, so a shard describes
  itself.
- `IntCodec`: integer tensors (token ids, attention masks) as int32, restored to int64: every id a tokenizer emits
  fits (checked; an error names the key).
Anything else (audio log-mel) is stored as it is.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Stored dtype of integer tensors; int64 values outside its range are refused (the error names the key).
NARROW_INT = torch.int32
# A decoded compact batch may differ from the processor's own float output by this much at most (first batch check).
PIXEL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PixelCodec:
    """uint8 pixels (channel axis -3: (C, H, W) images, (T, C, H, W) clips) -> float32 processor outputs."""

    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str = field(default="pixels_u8", init=False)
    stored_dtype = torch.uint8
    dtype = torch.float32

    def encode(self, key: str, values: torch.Tensor) -> torch.Tensor:
        if values.dtype != torch.uint8:
            exact = bool(((values >= 0) & (values <= 255) & (values == values.round())).all())
            if not exact:
                raise ValueError(f"{key}: pixels outside 0..255 or not whole numbers cannot be stored as uint8")
        return values.to(torch.uint8)

    @functools.cached_property
    def table(self) -> np.ndarray:
        """(C, 256) float32: the decoded value of each byte per channel.

        Computed in the processors' own order (transformers' numpy backend): rescale in float64, round to float32,
        then normalise in float32. Decoding so reproduces their outputs bit for bit; the algebraically equal
        `u8 * scale + offset` in float32 would differ by up to 4.8e-7 (one float32 ulp near 1)."""
        mean = np.asarray(self.mean, np.float32)[:, None]
        std = np.asarray(self.std, np.float32)[:, None]
        return ((np.arange(256, dtype=np.float64) * self.rescale_factor).astype(np.float32)[None, :] - mean) / std

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        # A table lookup per channel: several times faster than the arithmetic on a 224x224 batch, same values.
        source = stored.numpy()
        out = np.empty(source.shape, np.float32)
        for channel, table in enumerate(self.table):
            np.take(table, source[..., channel, :, :], out=out[..., channel, :, :], mode="clip")
        return torch.from_numpy(out)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "rescale_factor": self.rescale_factor, "mean": list(self.mean),
                "std": list(self.std)}


@dataclass(frozen=True)
class IntCodec:
    """Integers stored as int32, restored to int64 (what HF models take)."""

    kind: str = field(default="int32", init=False)
    stored_dtype = NARROW_INT
    dtype = torch.int64

    def encode(self, key: str, values: torch.Tensor) -> torch.Tensor:
        info = torch.iinfo(NARROW_INT)
        if values.numel() and (int(values.min()) < info.min or int(values.max()) > info.max):
            raise ValueError(f"{key}: values {int(values.min())}..{int(values.max())} do not fit {NARROW_INT} "
                             "(the stored form of integer tensors)")
        return values.to(NARROW_INT)

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(torch.int64)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind}


Codec = PixelCodec | IntCodec


def codec_from_meta(meta: Mapping[str, Any]) -> Codec:
    if meta["kind"] == "pixels_u8":
        return PixelCodec(float(meta["rescale_factor"]), tuple(meta["mean"]), tuple(meta["std"]))
    if meta["kind"] == "int32":
        return IntCodec()
    raise ValueError(f"unknown stored form {meta['kind']!r}; written by a newer version?")


def default_codec(values: torch.Tensor) -> Codec | None:
    """The codec of a tensor its modality declared none for: int64 narrowed, everything else as it is."""
    return IntCodec() if values.dtype == torch.int64 else None


@dataclass
class Stored:
    """A batch of processor outputs in stored form: `tensors` (N, ...) and the codec of each compact key."""

    tensors: dict[str, torch.Tensor]
    codecs: dict[str, Codec] = field(default_factory=dict)

    def decoded(self) -> dict[str, torch.Tensor]:
        """The processor outputs the model reads."""
        return {k: self.codecs[k].decode(v) if k in self.codecs else v for k, v in self.tensors.items()}


def _pixel_codec(processor: Any) -> PixelCodec | str:
    """The codec from the processor's attributes, or why there is none."""
    do_rescale, do_normalize = getattr(processor, "do_rescale", None), getattr(processor, "do_normalize", None)
    if do_rescale is None or do_normalize is None:
        return "it has no do_rescale/do_normalize"
    factor = float(processor.rescale_factor) if do_rescale else 1.0
    mean, std = (processor.image_mean, processor.image_std) if do_normalize else (0.0, 1.0)
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
    std = [float(std)] * len(mean) if isinstance(std, (int, float)) else [float(v) for v in std]
    return PixelCodec(factor, tuple(mean), tuple(std))


# One verdict per processor object (a preprocess run builds one): compact, or why not.
_VERDICTS: dict[int, tuple[Any, PixelCodec | str]] = {}


def _checked(codec: PixelCodec, key: str, call: Callable[..., torch.Tensor]) -> PixelCodec | str:
    """`codec` when it stores this batch losslessly (decoded within `PIXEL_TOLERANCE` of the float output)."""
    try:
        stored = codec.encode(key, call(do_rescale=False, do_normalize=False))
    except ValueError as err:
        return str(err)
    gap = float((codec.decode(stored) - call()).abs().max()) if stored.numel() else 0.0
    return codec if gap <= PIXEL_TOLERANCE else f"uint8 pixels decode to its output only within {gap:.3g}"


def compact_pixels(processor: Any, call: Callable[..., torch.Tensor], key: str = "pixel_values") -> Stored:
    """`call(**flags)` runs the modality's HF image processor on one batch and returns its pixels; this stores
    them as uint8 + `PixelCodec` when the processor can be expressed so, else as its float32 output.

    It can when its resized pixels (`do_rescale=False, do_normalize=False`) are whole numbers in 0..255 and the
    codec decodes them to its float output within `PIXEL_TOLERANCE` (checked on the first batch each processor
    object sees). Otherwise (a processor without those attributes, one that resizes to fractional values) a
    warning says so and the pixels are stored as float32, exactly as the processor gave them.
    """
    known = _VERDICTS.get(id(processor))
    if known is None:
        codec = _pixel_codec(processor)
        if isinstance(codec, PixelCodec):
            codec = _checked(codec, key, call)
        if isinstance(codec, str):
            logger.warning("%s: %s cannot be stored as uint8 (%s): stored as float32", key,
                           type(processor).__name__, codec)
        _VERDICTS[id(processor)] = known = (processor, codec)
    codec = known[1]
    if isinstance(codec, str):
        return Stored({key: call()})
    return Stored({key: codec.encode(key, call(do_rescale=False, do_normalize=False))}, {key: codec})

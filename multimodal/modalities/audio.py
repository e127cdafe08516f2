"""Audio: soundfile decode to mono float32 at the extractor's rate, log-mel features, an AST encoder."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers import ASTFeatureExtractor, AutoFeatureExtractor, AutoModel

from multimodal.config import ModalitySpec
from multimodal.manifest import resolve_inside
from multimodal.modalities.base import Modality, config_built, load_pretrained


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> np.ndarray:
    """Mono float32 waveform resampled to the rate of `processor`, the feature extractor that reads it."""
    wave, rate = sf.read(resolve_inside(root, cell), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)  # downmix: encoders here take mono
    target = int(processor.sampling_rate)
    if rate != target:
        ratio = Fraction(target, rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return wave


def build_processor(spec: ModalitySpec):
    """The pretrained extractor (its own rate), or a config-built AST extractor at `sampling_rate`."""
    rate = spec.options.get("sampling_rate")
    if spec.pretrained:
        extractor = load_pretrained(AutoFeatureExtractor, spec.pretrained, spec.revision, weights=False)
        if rate is not None and int(rate) != int(extractor.sampling_rate):
            raise ValueError(f"modalities.audio.sampling_rate is {rate} Hz but the feature extractor of "
                             f"{spec.pretrained!r} expects {extractor.sampling_rate} Hz; set it to "
                             f"{extractor.sampling_rate} (audio is decoded at the extractor's rate)")
        return extractor
    return ASTFeatureExtractor(
        sampling_rate=int(rate),
        num_mel_bins=int(spec.options["num_mel_bins"]),
        max_length=int(spec.options["max_length"]),
    )


def process(processor, items: Sequence[np.ndarray], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    # `load` decoded at this rate; passing it makes the extractor check that instead of assuming it.
    out = processor(list(items), sampling_rate=processor.sampling_rate, return_tensors="pt")
    # Only what the encoder consumes; AST has no padding mask, waveform encoders (wav2vec2) do.
    return {k: v for k, v in out.items() if k in ("input_values", "input_features", "attention_mask")}


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    # AST by default; `config.model_type: resnet` (num_channels: 1) reads the spectrogram as a one-channel image.
    return config_built(spec, "audio-spectrogram-transformer", num_mel_bins=int(spec.options["num_mel_bins"]),
                        max_length=int(spec.options["max_length"]))


AUDIO = Modality("audio", load, build_processor, process, build_encoder,
                 options=("sampling_rate", "num_mel_bins", "max_length"), checkpoints=())

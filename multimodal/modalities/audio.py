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


def _rate(spec: ModalitySpec) -> int:
    return int(spec.options["sampling_rate"])


def load(cell: str, root: Path, spec: ModalitySpec) -> np.ndarray:
    wave, rate = sf.read(resolve_inside(root, cell), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)  # downmix: encoders here take mono
    target = _rate(spec)
    if rate != target:
        ratio = Fraction(target, rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return wave


def build_processor(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoFeatureExtractor, spec.pretrained, spec.revision, weights=False)
    return ASTFeatureExtractor(
        sampling_rate=_rate(spec),
        num_mel_bins=int(spec.options["num_mel_bins"]),
        max_length=int(spec.options["max_length"]),
    )


def process(processor, items: Sequence[np.ndarray], spec: ModalitySpec) -> dict[str, torch.Tensor]:
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

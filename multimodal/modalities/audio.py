"""Audio: soundfile decode to mono float32 at the extractor's rate, log-mel features, an AST encoder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers import ASTFeatureExtractor, AutoFeatureExtractor, AutoModel

from multimodal.augment import band_mask, noise_at_snr, per_sample, roll, uniform
from multimodal.config import ModalitySpec
from multimodal.manifest import resolve_inside
from multimodal.modalities.base import Modality, config_built, load_pretrained, standardize

# One dB of power in the extractor's feature units: AST features are (ln mel power - mean) / (2 std), with the
# AudioSet std below as ASTFeatureExtractor's default. An extractor with other constants only rescales `gain_db`.
AST_STD = 4.5689974
FEATURES_PER_DB = math.log(10) / 10 / (2 * AST_STD)


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


def log_mel(inputs: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    x = inputs.get("input_values")
    if x is None or x.dim() != 3:
        raise ValueError(f"{what} works on log-mel `input_values` (batch, frames, mel bins) from an AST-style "
                         f"feature extractor; this extractor gives {({k: tuple(v.shape) for k, v in inputs.items()})}")
    return x


def signal_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, frames, 1): frames holding sound. The extractor pads a short clip with frames equal across every mel
    bin, as digital silence is; no recorded frame is."""
    return (x.amax(dim=2, keepdim=True) > x.amin(dim=2, keepdim=True))


def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator, strength: float, *, time_mask: int,
            freq_mask: int, gain_db: float, shift: float, noise_snr_db: Sequence[float] | None
            ) -> dict[str, torch.Tensor]:
    """On log-mel features, every magnitude times `strength`: a gain (a shift of the sound frames in ±gain_db),
    a circular time shift of up to `shift` x the frames, Gaussian noise on the sound frames at an SNR drawn in
    `noise_snr_db` (against the clip's feature std; strength scales its amplitude; None: no noise), then
    SpecAugment: one time
    band of up to `time_mask` frames and one frequency band of up to `freq_mask` bins set to 0."""
    x = log_mel(inputs, "augment.audio")
    if gain_db > 0:
        gain = uniform(x.shape[0], -gain_db * strength, gain_db * strength, generator).to(x.device)
        x = x + per_sample(gain * FEATURES_PER_DB, x) * signal_frames(x)  # padding is no sound: it stays
    x = roll(x, 1, round(shift * strength * x.shape[1]), generator)
    if noise_snr_db is not None:
        x = noise_at_snr(x, tuple(noise_snr_db), strength, (1, 2), generator, where=signal_frames(x))
    x = band_mask(x, 1, round(time_mask * strength), generator)
    x = band_mask(x, 2, round(freq_mask * strength), generator)
    return {**inputs, "input_values": x}


def utterance(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per clip: zero mean, unit variance over its sound frames and all mel bins (loudness and channel gain drop
    out); padding frames become 0."""
    x = log_mel(inputs, "input_norm.audio")
    return {**inputs, "input_values": standardize(x, (1, 2), signal_frames(x))}


def utterance_bins(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per clip and mel bin, over its sound frames (cepstral mean and variance normalisation): the microphone's
    frequency response drops out too; padding frames become 0."""
    x = log_mel(inputs, "input_norm.audio")
    return {**inputs, "input_values": standardize(x, (1,), signal_frames(x))}


AUDIO = Modality("audio", load, build_processor, process, build_encoder,
                 options=("sampling_rate", "num_mel_bins", "max_length"), checkpoints=(), augment=augment,
                 normalizations={"utterance": utterance, "utterance_bins": utterance_bins})


# --- test-time corruptions: evaluate's noise robustness curves (multimodal.robustness) --------------------------


def corrupt_noise(inputs: dict[str, torch.Tensor], level: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussian noise on the log-mel sound frames, of std `level` x the clip's feature std (over its sound
    frames and mel bins): a feature-domain signal-to-noise ratio of -20 log10(level) dB (0.1: 20 dB, 1: 0 dB),
    not a waveform SNR, since evaluate reads the cached features. Padding frames stay as they are."""
    if level <= 0:
        return inputs
    x = log_mel(inputs, "evaluate.corruptions.audio")
    # A fixed SNR of 0 dB scaled by `level`: the same noise draw at every level of a curve.
    return {**inputs, "input_values": noise_at_snr(x, (0.0, 0.0), level, (1, 2), generator, where=signal_frames(x))}


# Kind -> function; the levels of each curve are params `evaluate.corruptions.audio.<kind>`.
CORRUPTIONS = {"noise": corrupt_noise}

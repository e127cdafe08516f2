"""Tests for the embedded demo dataset builder and the eSpeak NG wrapper."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from multimodal.demo import text as demo_text
from multimodal.demo.dataset import DIGIT_NAMES, MANIFEST_COLUMNS, build_demo_dataset
from multimodal.demo.speakers import PITCH_JITTER, make_speakers
from multimodal.demo.speech import Utterance, synthesize, synthesize_fresh

N = 40
ARGS = dict(n_samples=N, seed=7, image_components=6, image_noise=0.35, audio_snr_db=(-16.0, -8.0),
            missing_rate=0.2, sample_rate=16000, speakers=4)
_FORBIDDEN = re.compile("|".join([*DIGIT_NAMES, r"\d"]), re.IGNORECASE)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One small build shared by the read-only tests."""
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_dataset(out, **ARGS)


def _present(df: pd.DataFrame, column: str) -> pd.Series:
    return df.loc[df[column] != "", column]


def test_manifest_columns_ids_and_labels(built: tuple[Path, pd.DataFrame]) -> None:
    _, df = built
    assert list(df.columns) == MANIFEST_COLUMNS
    assert "split" not in df.columns
    assert df["sample_id"].tolist() == [f"s{i:05d}" for i in range(N)]
    assert df["label"].between(0, 9).all()
    assert np.bincount(df["label"], minlength=10).tolist() == [N // 10] * 10  # class-balanced pick


def test_each_speaker_says_every_digit(built: tuple[Path, pd.DataFrame]) -> None:
    _, df = built
    assert sorted(df["group"].unique()) == ["spk00", "spk01", "spk02", "spk03"]
    # 4 samples per digit dealt round 4 speakers: one each, whatever the modality mask.
    assert (pd.crosstab(df["group"], df["label"]) == 1).all().all()


def test_speakers_have_their_own_voice_style_and_channel() -> None:
    speakers = make_speakers(30, np.random.default_rng(0), 16000)
    assert [s.name for s in speakers] == [f"spk{k:02d}" for k in range(30)]
    assert len({s.voice for s in speakers}) == 30
    assert len({(s.pitch, s.rate) for s in speakers}) > 20
    assert len({s.taps.tobytes() for s in speakers}) == 30 and len({s.noise_exponent for s in speakers}) == 30
    again = make_speakers(30, np.random.default_rng(0), 16000)
    assert [(s.voice, s.pitch, s.rate, s.taps.tobytes()) for s in speakers] == \
        [(s.voice, s.pitch, s.rate, s.taps.tobytes()) for s in again]
    rng = np.random.default_rng(1)
    said = [speakers[0].utterance("four", rng) for _ in range(50)]
    assert {u.voice for u in said} == {speakers[0].voice}  # one voice per speaker, jitter on pitch and rate only
    assert all(abs(u.pitch - speakers[0].pitch) <= PITCH_JITTER for u in said) and len({u.rate for u in said}) > 1


def test_a_speaker_channel_shapes_the_spectrum() -> None:
    speaker = make_speakers(1, np.random.default_rng(3), 16000)[0]
    noise = np.random.default_rng(0).standard_normal(16000)
    recorded = speaker.record(noise)
    assert recorded.shape == noise.shape
    # What comes out is the input's spectrum times the filter's response (linear, time-invariant).
    response = np.abs(np.fft.rfft(speaker.taps, 16000))
    measured = np.abs(np.fft.rfft(recorded)) / np.maximum(np.abs(np.fft.rfft(noise)), 1e-9)
    band = slice(1000, 6000)  # away from the edges, where "same" convolution cuts the tails
    assert np.median(np.abs(measured[band] - response[band])) < 0.1 * response[band].max()
    assert response[:20].max() < 0.2 * response.max()  # the band-pass removes DC and rumble


def test_no_manifest_file_written(built: tuple[Path, pd.DataFrame]) -> None:
    out, _ = built
    assert sorted(p.name for p in out.iterdir()) == ["audio", "images"]


def test_paths_are_relative_forward_slash(built: tuple[Path, pd.DataFrame]) -> None:
    _, df = built
    for column, folder, suffix in (("image", "images", ".png"), ("audio", "audio", ".wav")):
        expected = folder + "/" + df["sample_id"] + suffix
        present = df[column] != ""
        assert (df.loc[present, column] == expected[present]).all()


def test_images_decode(built: tuple[Path, pd.DataFrame]) -> None:
    out, df = built
    for rel in _present(df, "image"):
        with Image.open(out / rel) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)


def test_audio_decodes_as_one_second_mono(built: tuple[Path, pd.DataFrame]) -> None:
    out, df = built
    for rel in _present(df, "audio"):
        info = sf.info(out / rel)
        assert (info.channels, info.samplerate, info.frames, info.subtype) == (1, 16000, 16000, "PCM_16")
        wave, _ = sf.read(out / rel)
        assert 0.5 < np.abs(wave).max() <= 1.0  # peak-normalized, not clipped


def test_text_never_names_a_digit(built: tuple[Path, pd.DataFrame]) -> None:
    _, df = built
    texts = _present(df, "text")
    assert len(texts) > 0
    for text in texts:
        assert not _FORBIDDEN.search(text), text


def test_every_wording_is_free_of_digit_names() -> None:
    """Check the whole phrase bank, not only what one small build happened to draw."""
    words = [*demo_text._SINGLE_TEMPLATES, *demo_text._PAIR_TEMPLATES]
    words += [w for _, yes, no in demo_text._ATTRIBUTES.values() for w in (*yes, *no)]
    for wording in words:
        assert not _FORBIDDEN.search(wording.replace("{a}", "").replace("{b}", "")), wording


def test_hints_never_single_out_one_digit() -> None:
    rng = np.random.default_rng(0)
    for label in range(10):
        for _ in range(50):
            demo_text.hint(label, rng)  # would raise if no valid pair existed
        attributes = demo_text._ATTRIBUTES
        pairs = [(a, b) for a in attributes for b in attributes if a < b]
        assert any(demo_text._candidates(label, p) >= 2 for p in pairs)
        assert all(demo_text._candidates(label, (a,)) >= 2 for a in attributes)


def test_missing_rate_and_never_all_missing(built: tuple[Path, pd.DataFrame]) -> None:
    _, df = built
    missing = df[["image", "audio", "text"]] == ""
    assert not missing.all(axis=1).any()
    for column in missing:
        assert 0.1 <= missing[column].mean() <= 0.3
    out, _ = built
    assert len(list((out / "images").iterdir())) == (~missing["image"]).sum()  # no file for a missing modality
    assert len(list((out / "audio").iterdir())) == (~missing["audio"]).sum()


def test_same_seed_gives_identical_bytes(built: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, df = built
    again = build_demo_dataset(tmp_path, **ARGS)
    pd.testing.assert_frame_equal(df, again)
    for rel in [*_present(df, "image"), *_present(df, "audio")]:
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_other_seed_differs(built: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, df = built
    other = build_demo_dataset(tmp_path, **{**ARGS, "n_samples": 10, "seed": 8})
    assert not df.head(10).equals(other)


@pytest.mark.parametrize("bad", [{"n_samples": 0}, {"n_samples": 10**6}, {"missing_rate": 1.0},
                                 {"image_components": 0}, {"audio_snr_db": (0.0, -5.0)}, {"sample_rate": 100},
                                 {"speakers": 0}, {"speakers": 10**4}])
def test_invalid_arguments_raise(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_demo_dataset(tmp_path, **{**ARGS, **bad})


def test_speech_is_not_silent() -> None:
    wave, rate = synthesize("seven", voice="en+f3", rate=160, pitch=50)
    assert rate > 0 and wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) > rate * 0.2
    assert np.abs(wave).max() <= 1.0 and np.sqrt(np.mean(wave**2)) > 0.01


def test_fresh_process_speech_is_reproducible() -> None:
    synthesize("nine", voice="en+m3", rate=200, pitch=70)  # disturb this process's eSpeak state first
    batch = [Utterance("three", "en", 140, 30), Utterance("eight", "en+f2", 190, 60)]
    (first, rate), (second, _), (empty, _) = synthesize_fresh([batch, batch, []])
    assert rate > 0 and empty == [] and len(first) == 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_unknown_voice_raises() -> None:
    with pytest.raises(RuntimeError):
        synthesize("one", voice="no-such-voice", rate=150, pitch=50)

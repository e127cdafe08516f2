"""`preprocess_modality` on real files: audio is decoded at the rate of the feature extractor actually used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import resample_poly
from transformers import ASTFeatureExtractor

from multimodal.modalities import get_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.storage.shards import split_columns


@pytest.fixture
def extractor_24k(tmp_path) -> Path:
    """A pretrained-style feature extractor folder (as `pretrained:` names one) that expects 24 kHz audio."""
    folder = tmp_path / "ast-24k"
    ASTFeatureExtractor(sampling_rate=24000, num_mel_bins=16, max_length=32).save_pretrained(folder)
    return folder


def write_wav(path: Path, rate: int, seconds: float = 0.25) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * (300 + 4000 * t) * t)).astype(np.float32)  # a chirp: every band differs
    sf.write(path, wave, rate, subtype="FLOAT")
    return wave


def test_a_16khz_wav_is_resampled_to_the_pretrained_extractors_24khz(tmp_path, extractor_24k):
    wave = write_wav(tmp_path / "a.wav", 16000)
    frame = pd.DataFrame({"sample_id": ["s0"], "split": ["train"], "label": ["x"], "audio": ["a.wav"]})
    spec = ModalitySpec(pretrained=str(extractor_24k), config={})
    preprocess_modality(frame, tmp_path, tmp_path / "out", modality="audio", spec=spec, batch_size=4, shard_size=8)
    ids, columns = split_columns(tmp_path / "out", "train")
    assert ids == ["s0"]
    at_24k = resample_poly(wave, 3, 2).astype(np.float32)
    expected = ASTFeatureExtractor.from_pretrained(extractor_24k)([at_24k], sampling_rate=24000, return_tensors="np")
    np.testing.assert_allclose(columns["input_values"][:].numpy(), expected["input_values"], atol=1e-5)
    audio = get_modality("audio")
    assert len(audio.load("a.wav", tmp_path, spec, audio.build_processor(spec))) == len(at_24k)


def test_a_sampling_rate_that_disagrees_with_the_pretrained_extractor_is_refused(extractor_24k):
    audio = get_modality("audio")
    with pytest.raises(ValueError, match=r"modalities\.audio\.sampling_rate is 16000 Hz .* expects 24000 Hz"):
        audio.build_processor(ModalitySpec(pretrained=str(extractor_24k), config={}, sampling_rate=16000))
    at_24k_spec = ModalitySpec(pretrained=str(extractor_24k), config={}, sampling_rate=24000)
    assert audio.build_processor(at_24k_spec).sampling_rate == 24000

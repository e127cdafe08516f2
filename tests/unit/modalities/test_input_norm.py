"""Input normalisation: what each one does, that it travels with the saved model, and how it meets `align`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from multimodal.modalities import get_modality, input_norm, input_norm_of
from multimodal.modalities.audio import utterance, utterance_bins
from multimodal.modalities.image import per_image
from multimodal.models.model import Embedder, ModelSpec, MultimodalModel, encoder_entry, load_model, save_model
from multimodal.pipeline.params import ParamsError
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders, load_embedder
from multimodal.training.finetune import initial_model
from multimodal.training.train import predict
from stages.check_params import load_all
from tests.unit.conftest import TINY_SPECS, knobs, train_config, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")
LABELS = ["x", "y", "z"]
NORMS = {"image": "per_image", "audio": "utterance"}


def log_mel(n: int = 4, frames: int = 16, bins: int = 16, sound: int = 10) -> torch.Tensor:
    x = torch.randn(n, frames, bins, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x[:, sound:] = 0.467  # the extractor's padding: equal across bins
    return x


def split(n: int = 8, seed: int = 0) -> SplitData:
    gen = torch.Generator().manual_seed(seed)
    present = torch.ones(n, dtype=torch.bool)
    present[1] = False
    inputs = {"image": {"pixel_values": torch.randn(n, 3, 8, 8, generator=gen)},
              "audio": {"input_values": log_mel(n)}}
    for value in (v for d in inputs.values() for v in d.values()):
        value[~present] = 0
    return SplitData([f"{seed}-{i}" for i in range(n)], torch.arange(n) % 3, inputs,
                     {"image": present.clone(), "audio": torch.ones(n, dtype=torch.bool)})


def test_utterance_norm_standardises_the_sound_frames_and_zeroes_the_padding() -> None:
    x = log_mel()
    out = utterance({"input_values": x})["input_values"]
    sound = out[:, :10]
    assert torch.allclose(sound.mean(dim=(1, 2)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(sound.pow(2).mean(dim=(1, 2)), torch.ones(4), atol=1e-3)
    assert torch.equal(out[:, 10:], torch.zeros_like(out[:, 10:]))
    # A clip's loudness (a shift of its sound frames) and a gain on its features drop out.
    louder = x.clone()
    louder[:, :10] = louder[:, :10] * 2 + 5
    assert torch.allclose(utterance({"input_values": louder})["input_values"], out, atol=1e-4)


def test_utterance_bins_norm_standardises_each_mel_bin() -> None:
    x = log_mel()
    x[:, :10] += torch.linspace(-3, 3, 16)  # a microphone's frequency response
    out = utterance_bins({"input_values": x})["input_values"]
    assert torch.allclose(out[:, :10].mean(dim=1), torch.zeros(4, 16), atol=1e-5)
    assert not torch.allclose(utterance({"input_values": x})["input_values"][:, :10].mean(dim=1),
                              torch.zeros(4, 16), atol=1e-2)


def test_per_image_norm_removes_brightness_and_contrast() -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = per_image({"pixel_values": x})["pixel_values"]
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_image({"pixel_values": 0.3 * x - 0.2})["pixel_values"], out, atol=5e-3)


def test_unknown_norm_and_waveform_inputs_are_refused_with_the_key() -> None:
    with pytest.raises(ValueError, match="input_norm.image: unknown normalisation 'utterance'"):
        input_norm("image", "utterance")
    with pytest.raises(ValueError, match="input_norm.audio works on log-mel"):
        utterance({"input_values": torch.randn(2, 16000)})


def norm_model(norms: dict[str, str]) -> tuple[MultimodalModel, ModelSpec]:
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, ["image", "audio"], [], norms)
    spec = ModelSpec(["image", "audio"], {m: encoder_entry(e) for m, e in encoders.items()}, LABELS, dim=8,
                     fusion="concat", dropout=0.0, fusion_knobs=knobs("concat"),
                     input_norm={m: k for m, k in norms.items() if k != "none"})
    return MultimodalModel(Embedder(encoders, 8), "concat", 3, 0.0, knobs("concat")).eval(), spec


def rescaled(data: SplitData) -> SplitData:
    """Brighter, lower-contrast images and louder clips: what a per-sample normalisation removes."""
    inputs = {"image": {"pixel_values": data.inputs["image"]["pixel_values"] * 0.5 + 0.3},
              "audio": {"input_values": data.inputs["audio"]["input_values"].clone()}}
    inputs["audio"]["input_values"][:, :10] = inputs["audio"]["input_values"][:, :10] * 1.5 - 2
    return SplitData(data.sample_ids, data.labels, inputs, data.masks)


def test_normalisation_is_saved_and_reloaded_with_the_model(tmp_path) -> None:
    model, spec = norm_model(NORMS)
    data = split()
    before = predict(model, data, 4, CPU)
    save_model(model, spec, tmp_path / "m")
    loaded, loaded_spec = load_model(tmp_path / "m")
    assert loaded_spec.input_norm == NORMS
    assert {m: input_norm_of(e) for m, e in loaded.embedder.encoders.items()} == NORMS
    assert torch.allclose(predict(loaded, data, 4, CPU), before, atol=1e-6)
    # The reloaded model still normalises: inputs differing only by what the norms remove predict the same,
    # which a model without them does not.
    assert torch.allclose(predict(loaded, rescaled(data), 4, CPU), before, atol=1e-4)
    plain, _ = norm_model({"image": "none", "audio": "none"})
    assert not torch.allclose(predict(plain, rescaled(data), 4, CPU), predict(plain, data, 4, CPU), atol=1e-3)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """An aligned directory written by align's own `align_and_cache`, aligned (and features cached) with NORMS."""
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, ["image", "audio"], [], NORMS)
    raw = {"train": split(8, 0), "val": split(8, 1), "test": split(8, 2)}
    out = tmp_path_factory.mktemp("aligned")
    write_aligned(out, raw, encoders, [], {m: TINY_SPECS[m] for m in encoders}, dim=8, input_norm=NORMS)
    return out


def test_align_records_its_norm_and_finetuning_may_change_it_for_trained_encoders(aligned) -> None:
    embedder, meta = load_embedder(aligned)
    assert {m: input_norm_of(e) for m, e in embedder.encoders.items()} == NORMS
    cfg = train_config(input_norm={"image": "none", "audio": "utterance_bins"}, strategy="full")
    model, spec = initial_model(aligned, LABELS, ["image", "audio"], cfg)
    assert spec.input_norm == {"audio": "utterance_bins"}
    assert {m: input_norm_of(e) for m, e in model.embedder.encoders.items()} == {"image": "none",
                                                                                "audio": "utterance_bins"}


def test_frozen_strategy_refuses_a_norm_other_than_aligns(aligned) -> None:
    initial_model(aligned, LABELS, ["image", "audio"], train_config(input_norm=NORMS, strategy="frozen"))
    with pytest.raises(ValueError, match="input_norm.audio=none but align cached the audio features with utterance"):
        initial_model(aligned, LABELS, ["image", "audio"],
                      train_config(input_norm={**NORMS, "audio": "none"}, strategy="frozen"))


def test_params_refuse_searching_a_norm_that_cached_features_fix(tmp_path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"]["space"] |= {"input_norm.image": {"choice": ["none", "per_image"]},
                             "strategy": {"choice": ["full", "frozen"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="tune.space.input_norm.image: image is read as features cached by align"):
        load_all(tmp_path / "params.yaml")
    raw["tune"]["space"]["strategy"] = {"choice": ["full", "lora"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_all(tmp_path / "params.yaml").tune.space["input_norm.image"] == {"choice": ["none", "per_image"]}


def test_input_norm_params_allow_exactly_what_the_modality_implements(tmp_path) -> None:
    raw_params = yaml.safe_load((REPO / "params.yaml").read_text())
    for modality in ("image", "audio"):
        for kind in ("none", *get_modality(modality).normalizations):
            raw = copy.deepcopy(raw_params)
            raw["tune"]["fixed"]["input_norm"][modality] = kind
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
            assert load_all(tmp_path / "params.yaml").tune.fixed.input_norm[modality] == kind
    raw = copy.deepcopy(raw_params)
    raw["tune"]["fixed"]["input_norm"]["image"] = "utterance_bins"  # an audio one
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"input_norm.image: unknown normalisation 'utterance_bins'"):
        load_all(tmp_path / "params.yaml")

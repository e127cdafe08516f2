"""Training-batch augmentation: each modality's transforms, seeding, strength, and that only training sees it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from multimodal.modalities import build_pooled_encoder
from multimodal.modalities.audio import FEATURES_PER_DB
from multimodal.modalities.base import FeatureInput
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.pipeline.params import ParamsError
from multimodal.storage.dataset import SplitData
from multimodal.training.augment import Augmenter
from multimodal.training.train import TrainConfig, fit, predict
from multimodal.tuning.trial import trial_train_config
from stages.check_params import load_all
from tests.unit.conftest import TINY_SPECS, knobs, train_config

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")
OFF = {"image": {"affine_degrees": 0, "translate": 0, "scale": 0, "noise": 0, "cutout": 0},
       "audio": {"time_mask": 0, "freq_mask": 0, "gain_db": 0, "shift": 0, "noise_snr_db": None},
       "text": {"token_dropout": 0}}
ON = {"image": {"affine_degrees": 10, "translate": 0.1, "scale": 0.1, "noise": 0.05, "cutout": 0.25},
      "audio": {"time_mask": 4, "freq_mask": 3, "gain_db": 6, "shift": 0.1, "noise_snr_db": [10, 30]},
      "text": {"token_dropout": 0.3}}


def only(modality: str, **knobs) -> dict:
    return {**OFF, modality: {**OFF[modality], **knobs}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def log_mel(n: int = 6, frames: int = 16, bins: int = 12, padded_from: int = 12, seed: int = 0) -> torch.Tensor:
    """AST-like features: recorded frames vary across bins, the padding after `padded_from` is one constant."""
    x = torch.randn(n, frames, bins, generator=gen(seed))
    x[:, padded_from:] = 0.467
    return x


def tokens() -> dict[str, torch.Tensor]:
    """BERT-style rows: [CLS]=101 ... [SEP]=102 then [PAD]=0."""
    ids = torch.tensor([[101, 5, 6, 7, 8, 9, 10, 102, 0, 0],
                        [101, 11, 12, 13, 14, 15, 16, 17, 18, 102]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def batch(n: int = 6, missing: tuple[int, ...] = ()) -> SplitData:
    """One batch of raw image, audio and text inputs plus cached `features` of a fourth modality."""
    present = torch.ones(n, dtype=torch.bool)
    present[list(missing)] = False
    ids = tokens()
    inputs = {"image": {"pixel_values": torch.rand(n, 3, 8, 8, generator=gen(1)) * 2 - 1},
              "audio": {"input_values": log_mel(n)},
              "text": {k: v.repeat(n // 2, 1) for k, v in ids.items()},
              "cached": {"features": torch.randn(n, 4, generator=gen(2))}}
    for modality in ("image", "audio", "text"):
        for value in inputs[modality].values():
            value[~present] = 0
    masks = {m: present.clone() for m in inputs}
    return SplitData([str(i) for i in range(n)], torch.arange(n) % 3, inputs, masks)


def augmented(settings: dict, strength: float = 1.0, seed: int = 0, data: SplitData | None = None) -> SplitData:
    data = data or batch()
    return Augmenter(settings, strength, data)(data, gen(seed))


def same(a: SplitData, b: SplitData, modality: str) -> bool:
    return all(torch.equal(a.inputs[modality][k], b.inputs[modality][k]) for k in a.inputs[modality])


# --- the driver ---------------------------------------------------------------------------------------------------

def test_same_seed_same_batch_other_seed_other_batch() -> None:
    first, again, other = augmented(ON, seed=3), augmented(ON, seed=3), augmented(ON, seed=4)
    for modality in ("image", "audio", "text"):
        assert same(first, again, modality)
        assert not same(first, other, modality)
        assert not same(first, batch(), modality)


def test_strength_zero_is_the_identity_and_draws_nothing() -> None:
    data, generator = batch(), gen(5)
    state = generator.get_state()
    assert Augmenter(ON, 0.0, data)(data, generator) is data
    assert torch.equal(generator.get_state(), state)  # shuffles and modality dropout stay as without augmentation


def test_zero_knobs_leave_inputs_unchanged() -> None:
    out = augmented(OFF)
    assert all(same(out, batch(), m) for m in ("image", "audio", "text"))


def test_cached_features_and_absent_rows_are_not_augmented() -> None:
    data = batch(missing=(1, 4))
    out = augmented(ON, data=data)
    assert torch.equal(out.inputs["cached"]["features"], data.inputs["cached"]["features"])
    main = {"image": "pixel_values", "audio": "input_values", "text": "input_ids"}
    for modality, key in main.items():
        for value in out.inputs[modality].values():
            assert torch.equal(value[[1, 4]], torch.zeros_like(value[[1, 4]]))  # still the zeros load_split wrote
        present = [0, 2, 3, 5]
        assert not torch.equal(out.inputs[modality][key][present], data.inputs[modality][key][present])
    # The batch given was not changed in place.
    assert torch.equal(data.inputs["audio"]["input_values"][0], batch().inputs["audio"]["input_values"][0])


def test_a_misspelt_or_missing_knob_names_the_key() -> None:
    with pytest.raises(ValueError, match="augment.audio:.*time_masks"):
        Augmenter({**ON, "audio": {**ON["audio"], "time_masks": 3}}, 1.0, batch())
    with pytest.raises(ValueError, match="augment.image:.*cutout"):
        Augmenter({**ON, "image": {k: v for k, v in ON["image"].items() if k != "cutout"}}, 1.0, batch())


# --- audio ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, knob", [(1, "time_mask"), (2, "freq_mask")])
def test_spec_masks_zero_one_band_of_at_most_the_width(axis, knob) -> None:
    x = batch().inputs["audio"]["input_values"]
    out = augmented(only("audio", **{knob: 5}), seed=1).inputs["audio"]["input_values"]
    changed = (out != x).any(dim=3 - axis)  # (B, length along `axis`)
    assert changed.any()
    for row, band in zip(out, changed):
        where = band.nonzero().flatten()
        if len(where):
            assert len(where) <= 5 and where[-1] - where[0] + 1 == len(where)  # one contiguous band
            assert (row.index_select(axis - 1, where) == 0).all()


def test_gain_shifts_the_sound_frames_only_within_the_range() -> None:
    x = batch().inputs["audio"]["input_values"]
    out = augmented(only("audio", gain_db=6), seed=2).inputs["audio"]["input_values"]
    shift = out[:, :12] - x[:, :12]
    per_clip = shift[:, 0, 0]
    assert torch.allclose(shift, per_clip.view(-1, 1, 1).expand_as(shift), atol=1e-6)  # one gain per clip
    assert (per_clip.abs() <= 6 * FEATURES_PER_DB + 1e-6).all() and per_clip.std() > 0
    assert torch.equal(out[:, 12:], x[:, 12:])  # padding is no sound


def test_time_shift_is_a_circular_shift_of_the_frames() -> None:
    x = batch().inputs["audio"]["input_values"]
    out = augmented(only("audio", shift=0.25), seed=3).inputs["audio"]["input_values"]
    shifts = []
    for a, b in zip(x, out):
        shifts.append(next(k for k in range(-4, 5) if torch.equal(torch.roll(a, k, dims=0), b)))
    assert any(shifts)


def test_noise_lands_on_sound_frames_at_the_drawn_snr() -> None:
    x = log_mel(n=64, frames=40, bins=32, padded_from=30)
    data = SplitData([str(i) for i in range(64)], torch.zeros(64, dtype=torch.long), {"audio": {"input_values": x}},
                     {"audio": torch.ones(64, dtype=torch.bool)})
    out = augmented(only("audio", noise_snr_db=[20, 20]), data=data).inputs["audio"]["input_values"]
    noise = out - x
    assert torch.equal(noise[:, 30:], torch.zeros_like(noise[:, 30:]))
    snr = 20 * torch.log10(x[:, :30].std() / noise[:, :30].std())
    assert snr.item() == pytest.approx(20, abs=0.5)


# --- image --------------------------------------------------------------------------------------------------------

def test_affine_keeps_shape_moves_pixels_and_repeats_the_border() -> None:
    data = batch()
    out = augmented(only("image", affine_degrees=30, translate=0.2, scale=0.2), seed=1).inputs["image"]["pixel_values"]
    assert out.shape == data.inputs["image"]["pixel_values"].shape
    assert not torch.allclose(out, data.inputs["image"]["pixel_values"])
    flat = batch()
    flat.inputs["image"]["pixel_values"][:] = 0.3
    moved = augmented(only("image", affine_degrees=30, translate=0.2, scale=0.2), data=flat).inputs["image"]
    assert torch.allclose(moved["pixel_values"], torch.full_like(moved["pixel_values"], 0.3))  # no fill colour


def test_cutout_zeroes_one_square_of_the_given_side() -> None:
    data = batch()
    data.inputs["image"]["pixel_values"] = data.inputs["image"]["pixel_values"].abs() + 0.1  # no zero pixels
    out = augmented(only("image", cutout=0.5), seed=2, data=data).inputs["image"]["pixel_values"]
    for image in out:
        hole = (image == 0).all(dim=0)
        rows, cols = hole.any(dim=1).nonzero().flatten(), hole.any(dim=0).nonzero().flatten()
        assert hole.sum() == len(rows) * len(cols) and len(rows) <= 4 and len(cols) <= 4 and hole.any()


def test_image_noise_has_the_given_std() -> None:
    data = batch()
    out = augmented(only("image", noise=0.2), strength=0.5, data=data).inputs["image"]["pixel_values"]
    assert (out - data.inputs["image"]["pixel_values"]).std().item() == pytest.approx(0.1, rel=0.1)


# --- text ---------------------------------------------------------------------------------------------------------

def test_token_dropout_keeps_cls_sep_and_a_consistent_padding_mask() -> None:
    data = batch(n=40)
    out = augmented(only("text", token_dropout=0.5), seed=4, data=data).inputs["text"]
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == data.inputs["text"]["input_ids"].shape
    lengths = mask.sum(dim=1)
    assert (lengths < data.inputs["text"]["attention_mask"].sum(dim=1)).any()
    for row, original, length in zip(ids, data.inputs["text"]["input_ids"], lengths):
        assert row[0] == 101 and row[length - 1] == 102  # [CLS] first and [SEP] last attended
        assert (row[length:] == 0).all()  # then padding, under mask 0
        kept = row[1 : length - 1].tolist()
        inner = [t for t in original.tolist() if t not in (0, 101, 102)]
        assert all(a in inner for a in kept) and kept == sorted(kept, key=inner.index)  # a subsequence, in order
    assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())
    assert (out["token_type_ids"] == 0).all()


# --- in the training loop ------------------------------------------------------------------------------------------

def image_model() -> MultimodalModel:
    torch.manual_seed(0)
    encoder = build_pooled_encoder("image", TINY_SPECS["image"])
    return MultimodalModel(Embedder({"image": encoder, "cached": FeatureInput(4)}, 8), "concat", 3, 0.0,
                           knobs("concat"))


def recorded_fit(cfg: TrainConfig) -> tuple[list[torch.Tensor], list[torch.Tensor], SplitData, SplitData]:
    """Fit on image + cached features; returns the pixels the encoder saw in training and in evaluation."""
    train, val = batch(n=12, missing=(3,)), batch(n=6)
    model = image_model()
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    encoder = model.embedder.encoders["image"]
    encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen[module.training].append(kwargs["pixel_values"].clone()), with_kwargs=True)
    fit(model, train, val, cfg, CPU)
    predict(model, val, 4, CPU)
    return seen[True], seen[False], train, val


def rows(batches: list[torch.Tensor]) -> set[tuple[float, ...]]:
    return {tuple(x.flatten().tolist()) for b in batches for x in b if x.abs().sum() > 0}  # absent rows: zeros


def test_fit_augments_training_batches_only_and_reproducibly() -> None:
    cfg = train_config(lr=1e-3, batch_size=4, max_epochs=2, patience=5, modality_dropout=0.0, seed=3,
                       augment=ON, augment_strength=1.0)
    trained, evaluated, train, val = recorded_fit(cfg)
    stored = rows([train.inputs["image"]["pixel_values"]])
    assert len(trained) == 6 and not rows(trained) & stored  # 3 batches x 2 epochs, every one transformed
    assert not rows(trained[:3]) & rows(trained[3:])  # a fresh draw each epoch
    # Validation in `fit` and `predict` after it saw the stored pixels as they are.
    assert len(evaluated) == 4 and rows(evaluated) == rows([val.inputs["image"]["pixel_values"]])
    again, _, _, _ = recorded_fit(cfg)
    assert all(torch.equal(a, b) for a, b in zip(trained, again, strict=True))
    off, _, _, _ = recorded_fit(replace(cfg, augment_strength=0.0))
    assert rows(off) == stored


# --- params -------------------------------------------------------------------------------------------------------

def params_with(tmp_path: Path, **tune) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in tune.items():
        target = raw["tune"]
        *parents, leaf = key.split("__")
        for part in parents:
            target = target[part]
        # A space adds to the repo's (lr, fusion and dropout are always searched).
        target[leaf] = {**target[leaf], **value} if leaf == "space" else value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_config_takes_the_knobs_from_params_and_searched_entries() -> None:
    params = load_all(REPO / "params.yaml")
    cfg = trial_train_config(params, {"lr": 1e-3, "fusion": "concat", "dropout": 0.1, "augment_strength": 0.5,
                                      "augment.audio.time_mask": 7, "input_norm.audio": "utterance"})
    assert cfg.augment_strength == 0.5
    assert cfg.augment["audio"] == {**params.tune.fixed.augment["audio"], "time_mask": 7}
    assert cfg.augment["image"] == params.tune.fixed.augment["image"]
    assert cfg.input_norm == {**params.tune.fixed.input_norm, "audio": "utterance"}
    assert params.tune.fixed.augment["audio"]["time_mask"] != 7  # the validated params are left as they were
    Augmenter(cfg.augment, cfg.augment_strength, batch())  # every knob is one the transforms take


def test_searched_entries_are_checked_at_load_time(tmp_path) -> None:
    path = params_with(tmp_path, space={"augment.audio.time_masks": {"randint": [0, 9]},
                                        "augment.image.translate": {"uniform": [0.0, 2.0]},
                                        "augment.image": {"choice": [{"noise": 0.1}]},
                                        "augment_strength": {"uniform": [0.0, 2.0]}})
    with pytest.raises(ParamsError) as err:
        load_all(path)
    message = str(err.value)
    assert "tune.space.augment.audio.time_masks: tune.fixed has no such entry" in message
    assert "tune.space.augment.image.translate: 2.0 is not a valid value" in message
    assert "tune.space.augment.image: tune.fixed has no such entry (a single value)" in message
    assert "augment_strength" not in message
    with pytest.raises(ParamsError, match="tune.space.input_norm: search its entries one by one"):
        load_all(params_with(tmp_path, space={"input_norm": {"choice": [{"audio": "utterance"}]}}))


def test_augment_knobs_are_required_and_checked(tmp_path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["tune"]["fixed"]["augment"]["audio"]["gain_db"]
    raw["tune"]["fixed"]["augment"]["audio"]["noise_snr_db"] = [30, 10]
    raw["tune"]["fixed"]["augment_strength"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as err:
        load_all(tmp_path / "params.yaml")
    message = str(err.value)
    assert "tune.fixed.augment.audio.gain_db: Field required" in message
    assert "tune.fixed.augment.audio.noise_snr_db" in message and "low <= high" in message
    assert "tune.fixed.augment_strength" in message

"""Robustness at test time: corruption functions, modalities removed, corruption curves of saved models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from multimodal.data.manifest import SPLITS
from multimodal.evaluation.evaluate import FUSED, fair_report, load_readers, reader_probabilities, with_masked
from multimodal.evaluation.robustness import (
    Pooled,
    check_corruptions,
    chunk_rows,
    corrupted,
    corruption_curves,
    corruptions_of,
    missing_modality,
    reencode,
    removal_sets,
    row_seeds,
)
from multimodal.evaluation.scoring import ABSTAIN, top_label
from multimodal.modalities import PooledEncoder, get_modality, names
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import load_encoders
from multimodal.models.model import ModelSpec, build_model, encoder_entry, save_model
from multimodal.storage.columns import LazyColumn
from multimodal.storage.dataset import SplitData
from multimodal.storage.shards import ShardWriter, split_columns
from multimodal.training.align import build_encoders, encode_present
from multimodal.training.train import predict
from tests.unit.conftest import TINY_SPECS, knobs, params_section, repo_params, synthetic_split, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
DETERMINISTIC = {("image", "blur")}  # corruptions that draw nothing: the generator cannot change them
MINILM = ModalitySpec(pretrained="minilm", config={}, max_length=8, tokenizer="minilm")


def scored_predictions(models, test: SplitData, aligned) -> dict[str, np.ndarray]:
    """The class per row of every saved model, as stage evaluate scores them."""
    probs = reader_probabilities(load_readers(models, test, aligned, CPU), 16, CPU)
    return {name: top_label(p) for name, p in probs.items()}


def sample_inputs(modality: str) -> dict[str, torch.Tensor]:
    """A batch of 4 processor outputs of `modality`, shaped and padded as its processor's."""
    gen = torch.Generator().manual_seed(0)
    if modality == "image":
        return {"pixel_values": torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1}
    if modality == "audio":
        x = torch.randn(4, 20, 16, generator=gen)
        x[:, 15:] = -1.0  # padding frames: equal across mel bins
        return {"input_values": x}
    if modality == "text":  # [CLS] words [SEP] padding, rows of 12, 9, 6 and 3 tokens
        lengths = torch.tensor([12, 9, 6, 3])
        mask = (torch.arange(12) < lengths[:, None]).long()
        ids = torch.randint(1000, 1030, (4, 12), generator=gen) * mask
        ids[:, 0], ids[torch.arange(4), lengths - 1] = 101, 102
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    raise AssertionError(f"add sample inputs of the {modality} modality to test its corruptions")


KINDS = [(m, kind) for m in names() for kind in corruptions_of(m)]


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """How far a corruption moved the inputs: summed absolute change (floats) or changed entries (ids)."""
    return sum(float((after[k].double() - v.double()).abs().sum()) if v.is_floating_point()
               else float((after[k] != v).sum()) for k, v in before.items())


def test_the_default_modalities_offer_corruptions_and_params_levels_name_them():
    assert {m for m, _ in KINDS} >= set(repo_params().preprocess.modalities)
    levels = repo_params().evaluate.corruptions
    check_corruptions(levels, names())  # every configured kind exists
    with pytest.raises(ValueError, match=r"corruptions\.image\.fog: .*known: \['blur', 'noise', 'occlusion'\]"):
        check_corruptions({"image": {"fog": [0, 1]}}, ["image"])
    with pytest.raises(ValidationError, match=r"evaluate\.corruptions\.audio\.noise: .*must start at 0"):
        params_section("evaluate", corruptions={"audio": {"noise": [0.1, 1.0]}})
    with pytest.raises(ValidationError, match=r"evaluate\.corruptions\.audio\.noise: .*increase"):
        params_section("evaluate", corruptions={"audio": {"noise": [0, 1.0, 0.5]}})


@pytest.mark.parametrize("modality, kind", KINDS)
def test_corruption_is_identity_at_zero_grows_with_level_and_is_seeded(modality, kind):
    corrupt = corruptions_of(modality)[kind]
    inputs = sample_inputs(modality)
    levels = repo_params().evaluate.corruptions.get(modality, {}).get(kind, [0, 0.25, 0.5, 1.0])
    outs = [corrupt(inputs, level, torch.Generator().manual_seed(7)) for level in levels]
    assert all(torch.equal(outs[0][k], v) for k, v in inputs.items())  # level 0: the clean input
    for out in outs:
        assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in inputs.items()}
    amounts = [changed(inputs, out) for out in outs]
    assert amounts[0] == 0 and all(a > 0 for a in amounts[1:]), amounts
    assert amounts == sorted(amounts), amounts  # a stronger level moves the inputs further
    again = corrupt(inputs, levels[-1], torch.Generator().manual_seed(7))
    other = corrupt(inputs, levels[-1], torch.Generator().manual_seed(8))
    assert all(torch.equal(again[k], outs[-1][k]) for k in inputs)  # seeded
    differs = any(not torch.equal(other[k], outs[-1][k]) for k in inputs)
    assert differs is ((modality, kind) not in DETERMINISTIC)


def test_corruptions_leave_padding_and_special_tokens_alone():
    audio = sample_inputs("audio")
    noisy = corruptions_of("audio")["noise"](audio, 1.0, torch.Generator().manual_seed(0))["input_values"]
    assert torch.equal(noisy[:, 15:], audio["input_values"][:, 15:])
    text = sample_inputs("text")
    out = corruptions_of("text")["tokens"](text, 1.0, torch.Generator().manual_seed(0))
    inner = torch.zeros_like(text["attention_mask"], dtype=torch.bool)
    for row, length in enumerate([12, 9, 6, 3]):
        inner[row, 1:length - 1] = True
    assert torch.equal(out["input_ids"][~inner], text["input_ids"][~inner])  # [CLS], [SEP], padding
    assert torch.equal(out["attention_mask"], text["attention_mask"])
    assert set(out["input_ids"][inner].tolist()) <= set(text["input_ids"][inner].tolist())  # the texts' vocabulary
    half = corruptions_of("text")["tokens"](text, 0.5, torch.Generator().manual_seed(0))["input_ids"]
    assert ((half != text["input_ids"]) & inner).sum(1).tolist() <= [5, 4, 2, 0]  # round(.5 x 10, 7, 4, 1) per row


@pytest.mark.parametrize("modality, kind", KINDS)
def test_each_row_is_corrupted_by_its_own_seed_whatever_rows_come_with_it(modality, kind):
    inputs = sample_inputs(modality)
    corrupt = corruptions_of(modality)[kind]
    seeds = row_seeds(3, ["a", "b", "c", "d"])
    make = get_modality(modality).corruption_context
    context = make([inputs]) if make is not None else {}
    whole = corrupted(inputs, corrupt, 1.0, seeds, context)
    apart = corrupted({k: v[1:3] for k, v in inputs.items()}, corrupt, 1.0, seeds[1:3], context)
    assert all(torch.equal(whole[k][1:3], apart[k]) for k in inputs)
    assert all(torch.equal(v, sample_inputs(modality)[k]) for k, v in inputs.items())  # the inputs untouched
    assert row_seeds(3, ["b"]) == seeds[1:2] and len(set(seeds)) == 4 and row_seeds(4, ["a"]) != seeds[:1]


def test_removal_sets_go_up_to_pairs_and_keep_a_modality():
    assert removal_sets(["x", "y", "z"]) == [(), ("x",), ("y",), ("z",), ("x", "y"), ("x", "z"), ("y", "z")]
    assert removal_sets(["x", "y"]) == [(), ("x",), ("y",)]
    assert max(len(r) for r in removal_sets(["w", "x", "y", "z"])) == 2


def features_models(tmp_path, test: SplitData):
    """A fused model of cached-feature modalities a and b, saved as tune saves it, with align's features file."""
    aligned, models = tmp_path / "aligned", tmp_path / "models"
    (aligned / "features").mkdir(parents=True)
    save_file({m: test.inputs[m]["features"] for m in test.modalities}, str(aligned / "features" / "test.safetensors"),
              metadata={"sample_ids": json.dumps(test.sample_ids)})
    spec = ModelSpec(["a", "b"], {"a": {"features": 8}, "b": {"features": 8}}, ["x", "y", "z"], dim=8,
                     fusion="concat", dropout=0.0, fusion_knobs=knobs("concat"), input_norm={})
    torch.manual_seed(0)
    save_model(build_model(spec), spec, models / "best")
    return models, aligned


def test_missing_modality_nothing_removed_is_the_plain_fused_accuracy(tmp_path):
    test = synthetic_split(60, missing=0.3, seed=3)
    models, aligned = features_models(tmp_path, test)
    y = test.labels.numpy()
    preds = scored_predictions(models, test, aligned)
    report = fair_report(y, preds, {}, 200, seed=0)
    fused = load_readers(models, test, aligned, CPU)[FUSED]
    rows = missing_modality(Pooled(fused, preds[FUSED], 16, CPU), y, 16, CPU, 200, seed=0)
    assert [r["removed"] for r in rows] == ["none", "a", "b"]
    assert rows[0]["accuracy"] == report["fused_accuracy"] and rows[0]["minus_clean"] == 0.0
    # Without a: rows holding only a are left empty and count wrong; the others are the model shown b alone.
    only_a = (test.masks["a"] & ~test.masks["b"]).numpy()
    assert rows[1]["n_left_empty"] == only_a.sum() > 0 and rows[1]["n"] == len(y)
    with_b = torch.nonzero(test.masks["b"]).flatten()
    shown_b = predict(fused.model, with_masked(test, ["a"]).take(with_b), 16, CPU).argmax(1).numpy()
    assert rows[1]["accuracy"] == pytest.approx((shown_b == y[with_b.numpy()]).sum() / len(y))
    assert rows[1]["ci95_lo"] <= rows[1]["minus_clean"] <= rows[1]["ci95_hi"]


def save_image_text(root, text_spec: ModalitySpec) -> SplitData:
    """Test rows with a raw image (a trainable tiny ViT) and text read as features cached from a frozen encoder of
    `text_spec`, as `align` and `tune` leave them under `root`: the aligned folder (align's own code, the test rows
    standing in for every split), a fused and two unimodal models."""
    specs = {"image": TINY_SPECS["image"], "text": text_spec}
    n = 24
    y = torch.arange(n) % 3
    gen = torch.Generator().manual_seed(0)
    pixels = (y[:, None, None, None] - 1).float() + 0.5 * torch.randn(n, 3, 8, 8, generator=gen)
    text = get_modality("text")
    words = ["red", "green", "blue"]
    texts = [" ".join([words[k], *["one"] * (i % 5)]) for i, k in enumerate(y.tolist())]  # 3 to 7 of 8 tokens
    tokens = text.process(text.build_processor(specs["text"]), texts, specs["text"])
    masks = {"image": torch.arange(n) >= 4, "text": (torch.arange(n) < 4) | (torch.arange(n) >= 7)}
    inputs = {"image": {"pixel_values": pixels * masks["image"][:, None, None, None]},
              "text": {k: v * masks["text"][:, None] for k, v in tokens.items()}}
    raw = SplitData([f"t{i}" for i in range(n)], y, inputs, masks)
    torch.manual_seed(0)
    encoders = build_encoders(specs, ["image", "text"], ["text"])
    (root / "aligned").mkdir()
    write_aligned(root / "aligned", {s: raw for s in SPLITS}, encoders, ["text"], specs, dim=8)
    spec = ModelSpec(["image", "text"], {"image": encoder_entry(encoders["image"]),
                                         "text": {"features": encoders["text"].out_dim}},
                     ["x", "y", "z"], dim=8, fusion="concat", dropout=0.0, fusion_knobs=knobs("concat"),
                     input_norm={})
    save_model(build_model(spec), spec, root / "models" / "best")
    for m in spec.modalities:
        save_model(build_model(spec.restricted([m])), spec.restricted([m]), root / "models" / "unimodal" / m)
    return raw


@pytest.fixture(scope="module")
def image_text(tmp_path_factory):
    """`save_image_text` with text cached from frozen MiniLM."""
    root = tmp_path_factory.mktemp("robustness")
    return root, save_image_text(root, MINILM)


def test_curves_start_at_the_clean_accuracy_and_reencode_cached_modalities(image_text):
    root, raw = image_text
    readers = load_readers(root / "models", raw, root / "aligned", CPU)
    assert readers["unimodal_text"].spec.feature_modalities == ["text"]
    preds = {k: top_label(p) for k, p in reader_probabilities(readers, 16, CPU).items()}
    y = raw.labels.numpy()
    scored = scored_predictions(root / "models", raw, root / "aligned")  # what evaluate scores
    levels = {"image": {"noise": [0, 0.5, 20.0], "blur": [0, 1.0]}, "text": {"tokens": [0, 0.5, 1.0]}}
    encoders = load_encoders(root / "aligned", ["text"])  # as stage evaluate loads them
    pooled = {name: Pooled(reader, preds[name], 16, CPU) for name, reader in readers.items()}
    rows, skipped = corruption_curves(pooled, raw, y, levels, encoders, 16, CPU, seed=0)
    assert skipped == {}
    # Read from its pooled outputs, the fused model predicts what it predicts whole; the model itself is untouched.
    fused, view = readers[FUSED], pooled[FUSED].changing()
    assert isinstance(fused.model.embedder.encoders["image"], PooledEncoder)
    assert not isinstance(view.model.embedder.encoders["image"], PooledEncoder)
    assert np.allclose(view.probabilities(view.data, 16, CPU), fused.probabilities(fused.data, 16, CPU), atol=1e-5,
                       equal_nan=True)
    assert [(r["modality"], r["corruption"], r["level"]) for r in rows] == [
        ("image", "noise", 0), ("image", "noise", 0.5), ("image", "noise", 20.0), ("image", "blur", 0),
        ("image", "blur", 1.0), ("text", "tokens", 0), ("text", "tokens", 0.5), ("text", "tokens", 1.0)]
    curve = {(r["modality"], r["corruption"], r["level"]): r for r in rows}
    for m in ("image", "text"):
        has = raw.masks[m].numpy()
        clean = curve[(m, next(iter(levels[m])), 0)]
        assert clean["n"] == has.sum() and preds[f"unimodal_{m}"][has].min() != ABSTAIN
        # Exactly, not approximately: level 0 is the clean input, scored as evaluate scores it.
        assert clean["fused"] == (scored[FUSED][has] == y[has]).mean()
        assert clean["unimodal"] == (scored[f"unimodal_{m}"][has] == y[has]).mean()
    # The corrupted inputs reach the models: images drowned in noise, texts whose every word was swapped (the
    # text ones encoded again by MiniLM) change what the models get right (fixed seeds: a deterministic check).
    assert curve[("image", "noise", 20.0)]["unimodal"] != curve[("image", "noise", 0)]["unimodal"]
    assert curve[("text", "tokens", 1.0)]["unimodal"] != curve[("text", "tokens", 0)]["unimodal"]


def test_reencoding_trims_padding_of_token_inputs_only_and_gives_the_same_features(image_text):
    root, raw = image_text
    text = load_encoders(root / "aligned", ["text"])["text"]
    lengths = raw.inputs["text"]["attention_mask"][raw.masks["text"]].sum(1)
    assert lengths.min() < lengths.max() < 8  # padded, to different lengths
    full = encode_present(text, raw, "text", 5, CPU)
    trimmed = reencode(text, "text", raw.inputs["text"], raw.masks["text"], 5, CPU)
    assert torch.allclose(trimmed, full, atol=1e-5) and (trimmed[~raw.masks["text"]] == 0).all()
    # Pixel values are no token sequence: encoded whole, as align encodes them.
    vit = load_readers(root / "models", raw, root / "aligned", CPU)["unimodal_image"].model.embedder.encoders["image"]
    assert torch.equal(reencode(vit, "image", raw.inputs["image"], raw.masks["image"], 5, CPU),
                       encode_present(vit, raw, "image", 5, CPU))


def test_a_cached_modality_whose_encoder_does_not_reproduce_its_features_is_skipped_with_the_reason(image_text):
    root, raw = image_text
    readers = load_readers(root / "models", raw, root / "aligned", CPU)
    # Another text encoder than the one behind the cache (a config-built one, new random weights).
    other = {"text": build_encoders({"text": TINY_SPECS["text"]}, ["text"], ["text"])["text"].eval()}
    preds = {k: top_label(p) for k, p in reader_probabilities(readers, 16, CPU).items()}
    pooled = {name: Pooled(reader, preds[name], 16, CPU) for name, reader in readers.items()}
    rows, skipped = corruption_curves(pooled, raw, raw.labels.numpy(), {"image": {"noise": [0, 1.0]},
                                                                         "text": {"tokens": [0, 1.0]}},
                                      other, 16, CPU, seed=0)
    assert set(skipped) == {"text"} and "does not reproduce them" in skipped["text"]
    assert {r["modality"] for r in rows} == {"image"}


def test_a_config_built_frozen_encoder_is_saved_by_align_so_its_curves_are_drawn(tmp_path):
    """Its random weights cannot be built again from params: the ones align saved re-encode the cache exactly."""
    raw = save_image_text(tmp_path, TINY_SPECS["text"])
    readers = load_readers(tmp_path / "models", raw, tmp_path / "aligned", CPU)
    preds = {k: top_label(p) for k, p in reader_probabilities(readers, 16, CPU).items()}
    pooled = {name: Pooled(reader, preds[name], 16, CPU) for name, reader in readers.items()}
    encoders = load_encoders(tmp_path / "aligned", ["text"])
    cached = pooled["unimodal_text"].outputs["text"]
    assert torch.allclose(encode_present(encoders["text"], raw, "text", 16, CPU), cached[:], atol=1e-6)
    rows, skipped = corruption_curves(pooled, raw, raw.labels.numpy(), {"text": {"tokens": [0, 1.0]}}, encoders, 16,
                                      CPU, seed=0)
    assert skipped == {}
    assert [(r["modality"], r["level"]) for r in rows] == [("text", 0.0), ("text", 1.0)]


class ReadRecorder(LazyColumn):
    """A lazy column (real shards, real reads) that notes how many rows each read asked for."""

    reads: list[int]

    def __getitem__(self, index):
        out = super().__getitem__(index)
        self.reads.append(len(out))
        return out


def test_curves_are_the_same_for_any_chunk_size_and_never_read_the_split_whole(image_text, tmp_path):
    """The corrupted modality is read, corrupted and scored a chunk at a time, each row with a seed of its own."""
    root, raw = image_text
    writer = ShardWriter(tmp_path, "test", shard_size=10)  # the images as preprocess stores them: shards
    writer.add(raw.sample_ids, raw.inputs["image"])
    writer.flush()
    _, columns = split_columns(tmp_path, "test")
    lazy = ReadRecorder(columns["pixel_values"].segments, columns["pixel_values"].segment_of,
                        columns["pixel_values"].row_of)
    lazy.reads = []
    raw = SplitData(raw.sample_ids, raw.labels, {**raw.inputs, "image": {"pixel_values": lazy}}, raw.masks)
    readers = load_readers(root / "models", raw, root / "aligned", CPU)
    preds = {k: top_label(p) for k, p in reader_probabilities(readers, 16, CPU).items()}
    pooled = {name: Pooled(reader, preds[name], 16, CPU) for name, reader in readers.items()}
    levels = {"image": {"noise": [0, 0.5, 3.0], "occlusion": [0, 0.5]}, "text": {"tokens": [0, 0.5, 1.0]}}
    encoders = load_encoders(root / "aligned", ["text"])
    assert chunk_rows(raw.inputs["image"], 16) >= len(raw)  # the default: one chunk holds this whole split

    def curves(chunk):
        lazy.reads = []
        rows, skipped = corruption_curves(pooled, raw, raw.labels.numpy(), levels, encoders, 16, CPU, seed=0,
                                          rows_per_chunk=chunk)
        assert skipped == {}
        return rows, max(lazy.reads)

    whole, most = curves(None)
    assert most == raw.masks["image"].sum()  # the whole split in one chunk: every image row
    for chunk in (3, 7):
        rows, most = curves(chunk)
        assert rows == whole and most <= chunk
    noisy = {(r["modality"], r["corruption"], r["level"]): r["unimodal"] for r in whole}
    assert noisy[("image", "noise", 3.0)] != noisy[("image", "noise", 0)]  # the corruption reaches the model

"""Compact shards (uint8 pixels, int32 ids) read lazily, and align's features file written row block by row block."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ASTFeatureExtractor

from multimodal.modalities import get_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.storage.codecs import IntCodec, PixelCodec, compact_pixels
from multimodal.storage.columns import LazyColumn, read_header
from multimodal.storage.dataset import SplitData, load_split
from multimodal.storage.shards import ShardWriter, split_columns
from multimodal.training.align import build_encoders, encode_present, feature_files
from tests.unit.conftest import TINY_SPECS

CODEC = PixelCodec(1 / 255, (0.5, 0.4, 0.3), (0.5, 0.25, 0.2))


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (13 + i % 5, 11, 3), dtype=np.uint8)) for i in range(n)]


def write(root, modality, split, ids, tensors_of, codecs=None, shard_size=7):
    """`ids` in batches of 3 (so batches straddle shard boundaries), `tensors_of(ids)` their tensors."""
    writer = ShardWriter(root / modality, split, shard_size)
    for start in range(0, len(ids), 3):
        writer.add(ids[start : start + 3], tensors_of(ids[start : start + 3]), codecs)
    writer.flush()
    return writer.shards


def dense(frame, split, labels, written) -> SplitData:
    """What `load_split` held before lazy reading, built from what was written (no shard is read):
    `written[modality]` = (sample ids, their decoded tensors), placed into (N, ...) zeros."""
    rows = frame[frame["split"] == split]
    position = {s: i for i, s in enumerate(rows["sample_id"])}
    inputs, masks = {}, {}
    for m, (ids, tensors) in written.items():
        at = torch.tensor([position[s] for s in ids], dtype=torch.long)
        masks[m] = torch.zeros(len(rows), dtype=torch.bool)
        masks[m][at] = True
        inputs[m] = {}
        for key, value in tensors.items():
            inputs[m][key] = torch.zeros((len(rows), *value.shape[1:]), dtype=value.dtype)
            inputs[m][key][at] = value
    y = torch.tensor([labels.index(v) for v in rows["label"]])
    return SplitData(rows["sample_id"].tolist(), y, inputs, masks)


def test_lazy_batches_equal_in_memory_batches(tmp_path):
    n = 40
    ids = [f"s{i:03d}" for i in range(n)]
    frame = pd.DataFrame({"sample_id": ids, "label": [["a", "b", "c"][i % 3] for i in range(n)], "split": "train"})
    value = {s: i for i, s in enumerate(ids)}

    def pixels(batch):  # uint8 before normalisation, as `Modality.store` gives them
        return {"pixel_values": torch.stack([torch.full((3, 4, 5), value[s] * 5 % 256, dtype=torch.uint8)
                                             for s in batch])}

    def tokens(batch):
        ids_ = torch.tensor([[value[s], value[s] * 1000, 7] for s in batch])
        return {"input_ids": ids_, "attention_mask": (ids_ > 0).long(), "x": ids_.float() / 3}

    # Shards in another order than the manifest, rows absent from each modality.
    image_ids, text_ids = [s for s in reversed(ids) if value[s] % 4], [s for s in ids if value[s] % 3]
    write(tmp_path, "image", "train", image_ids, pixels, {"pixel_values": CODEC})
    write(tmp_path, "text", "train", text_ids, tokens)
    lazy = load_split(frame, "train", ["a", "b", "c"], tmp_path, ["image", "text"])
    memory = dense(frame, "train", ["a", "b", "c"], {
        "image": (image_ids, {"pixel_values": CODEC.decode(pixels(image_ids)["pixel_values"])}),
        "text": (text_ids, tokens(text_ids))})
    assert isinstance(lazy.inputs["image"]["pixel_values"], LazyColumn)
    assert lazy.inputs["image"]["pixel_values"].shape == (n, 3, 4, 5)
    seen = 0
    for a, b in zip(lazy.batches(6, torch.Generator().manual_seed(3)),
                    memory.batches(6, torch.Generator().manual_seed(3)), strict=True):
        assert a.sample_ids == b.sample_ids and torch.equal(a.labels, b.labels)
        for m in ("image", "text"):
            assert torch.equal(a.masks[m], b.masks[m])
            assert sorted(a.inputs[m]) == sorted(b.inputs[m])
            for key, got in a.inputs[m].items():
                assert isinstance(got, torch.Tensor) and got.dtype == b.inputs[m][key].dtype, key
                assert torch.equal(got, b.inputs[m][key]), key
        seen += len(a)
    assert seen == n
    # Absent rows are zeros (not the codec's offset); ids come back as int64.
    assert not lazy.inputs["image"]["pixel_values"][torch.tensor([0, 4])].any()
    assert lazy.inputs["text"]["input_ids"][torch.tensor([1, 39])].dtype == torch.int64
    # `take` stays lazy (the rows of a subset are read when a batch of it is).
    sub = lazy.take(torch.tensor([5, 1, 5]))
    assert isinstance(sub.inputs["image"]["pixel_values"], LazyColumn)
    assert torch.equal(sub.inputs["text"]["x"][:], memory.inputs["text"]["x"][torch.tensor([5, 1, 5])])
    with pytest.raises(TypeError, match=r"image\.pixel_values"):
        lazy.to(torch.device("cpu"))


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # uneven per-channel factors, unlike the default 0.5s
VIDEO_SPEC = ModalitySpec(pretrained=None, config={}, image_size=8, num_frames=3, encoder="video")


def clips(n: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, 13 + i % 5, 11, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("mean_std", [None, IMAGENET], ids=["default", "imagenet"])
@pytest.mark.parametrize("modality", ["image", "video"])
def test_compact_pixels_decode_to_the_processors_own_float_output_bit_for_bit(tmp_path, modality, mean_std):
    """The uint8 form and its codec give exactly what the HF processor, called normally (rescale + normalise in
    float), outputs: stored, decoded, through `process`, and read back from a shard."""
    handler = get_modality(modality)
    spec = TINY_SPECS["image"] if modality == "image" else VIDEO_SPEC
    processor = handler.build_processor(spec)
    if mean_std is not None:
        processor.image_mean, processor.image_std = (list(v) for v in mean_std)
    items = pictures(5) if modality == "image" else clips(5, int(spec.options["num_frames"]))
    # The processor's own float32 output (what shards held before): images as a batch, clips as videos.
    expected = (processor(images=items, return_tensors="pt") if modality == "image"
                else processor(items, return_tensors="pt"))["pixel_values"]
    assert expected.dtype == torch.float32 and expected.shape[0] == 5
    assert mean_std is None or expected.abs().max() > 1  # the ImageNet statistics took effect (0.5s stay in -1..1)

    stored = handler.store(processor, items, spec)
    assert stored.tensors["pixel_values"].dtype == torch.uint8  # the compact form, not the float32 fallback
    mean, std = mean_std or ((0.5,) * 3, (0.5,) * 3)
    assert stored.codecs["pixel_values"] == PixelCodec(processor.rescale_factor, mean, std)
    assert torch.equal(stored.decoded()["pixel_values"], expected)
    assert torch.equal(handler.process(processor, items, spec)["pixel_values"], expected)

    ShardWriter(tmp_path, "train", 4).add([str(i) for i in range(5)], stored.tensors, stored.codecs)
    ids, columns = split_columns(tmp_path, "train")  # nothing pending yet: 4 rows in one shard
    assert ids == ["0", "1", "2", "3"] and isinstance(columns["pixel_values"], LazyColumn)
    assert torch.equal(columns["pixel_values"][:], expected[:4])
    assert torch.equal(columns["pixel_values"][torch.tensor([3, 1])], expected[[3, 1]])
    metadata, segments = read_header(tmp_path / "train-00000.safetensors")
    assert segments["pixel_values"].stored_dtype == torch.uint8  # 1 byte a value on disk
    assert segments["pixel_values"].codec == stored.codecs["pixel_values"]


def test_integer_tensors_are_stored_as_int32_and_restored_exactly(tmp_path):
    ids = torch.tensor([[101, 2**31 - 1, 0], [5, 6, 7]])
    write(tmp_path, "text", "val", ["a", "b"], lambda batch: {"input_ids": ids, "attention_mask": (ids > 0).long()})
    _, segments = read_header(tmp_path / "text" / "val-00000.safetensors")
    assert segments["input_ids"].stored_dtype == torch.int32 and segments["input_ids"].codec == IntCodec()
    got, columns = split_columns(tmp_path / "text", "val")
    read = columns["input_ids"][:]
    assert got == ["a", "b"] and read.dtype == torch.int64 and torch.equal(read, ids)


def test_values_that_do_not_fit_the_stored_form_are_refused_naming_the_key(tmp_path):
    writer = ShardWriter(tmp_path, "train", 4)
    with pytest.raises(ValueError, match=r"token_type_ids: values 0\.\.4294967296 do not fit"):
        writer.add(["a"], {"token_type_ids": torch.tensor([[0, 2**32]])})
    with pytest.raises(ValueError, match="pixel_values: pixels outside 0..255"):
        writer.add(["a"], {"pixel_values": CODEC.encode("pixel_values", torch.tensor([[1.5]]))},
                   {"pixel_values": CODEC})


def test_a_processor_without_rescale_and_normalize_is_stored_as_float32(caplog):
    """A processor the uint8 form cannot express (here a feature extractor) keeps its float32 output."""
    extractor = ASTFeatureExtractor(num_mel_bins=16, max_length=16)
    wave = [np.sin(np.arange(4000, dtype=np.float32) / 7)]

    def call(**flags):
        return extractor(wave, sampling_rate=16000, return_tensors="pt", **flags)["input_values"]

    with caplog.at_level(logging.WARNING):
        stored = compact_pixels(extractor, call, key="input_values")
    assert stored.codecs == {} and stored.tensors["input_values"].dtype == torch.float32
    assert torch.equal(stored.tensors["input_values"], call())
    assert "input_values: ASTFeatureExtractor cannot be stored as uint8" in caplog.text


def test_streamed_features_file_is_a_safetensors_file_equal_to_in_memory_encoding(tmp_path):
    n = 11
    mask = torch.tensor([i % 3 != 1 for i in range(n)])
    tokenizer = get_modality("text").build_processor(TINY_SPECS["text"])
    texts = [f"sample number {i} " * (1 + i % 3) for i in range(n)]
    tokens = get_modality("text").process(tokenizer, texts, TINY_SPECS["text"])
    data = SplitData([str(i) for i in range(n)], torch.zeros(n, dtype=torch.long), {"text": tokens}, {"text": mask})
    encoder = build_encoders(TINY_SPECS, ["text"], ["text"])["text"]
    in_memory = encode_present(encoder, data, "text", 3, torch.device("cpu"))
    files = feature_files(tmp_path, {"test": data.sample_ids}, {"text": encoder.out_dim, "zeros": 2})
    assert encode_present(encoder, data, "text", 3, torch.device("cpu"), sink=lambda r, v: files["test"].write(
        "text", r, v)) is None
    loaded = load_file(str(tmp_path / "features" / "test.safetensors"))
    assert torch.equal(loaded["text"], in_memory)
    assert torch.equal(loaded["zeros"], torch.zeros(n, 2))  # never written: zeros, as absent rows were
    assert torch.equal(files["test"].column("text")[torch.tensor([4, 0])], in_memory[[4, 0]])


def test_written_files_are_safetensors_whose_bytes_depend_only_on_the_contents(tmp_path):
    """safetensors' own writer orders metadata like a Rust hash map (differently per process): shards must not."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from multimodal.storage.columns import write_tensors

    tensors = {"b": torch.arange(6, dtype=torch.int32).reshape(2, 3), "a": torch.rand(2, 4),
               "m": torch.tensor([True, False]), "u": torch.arange(8, dtype=torch.uint8).reshape(2, 2, 2)}
    metadata = {f"key{i}": str(i) for i in range(8)}
    write_tensors(tmp_path / "one.safetensors", tensors, metadata)
    write_tensors(tmp_path / "two.safetensors", dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "one.safetensors"))
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as handle:
        assert handle.metadata() == metadata

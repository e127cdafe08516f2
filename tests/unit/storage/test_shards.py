"""Sharded safetensors per split, and the join of several modalities' shards onto the manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from multimodal.storage.columns import LazyColumn
from multimodal.storage.dataset import SplitData, load_split
from multimodal.storage.shards import ShardWriter, split_columns


def sample(i: int) -> dict[str, torch.Tensor]:
    return {"x": torch.full((1, 2, 3), float(i)), "ids": torch.tensor([[i, i + 1]], dtype=torch.long)}


def test_writer_flushes_every_shard_size_samples(tmp_path):
    writer = ShardWriter(tmp_path / "out", "train", shard_size=3)
    for i in range(7):
        writer.add([f"id{i}"], sample(i))
    assert writer.shards == 2  # 3 + 3 written, 1 pending
    writer.flush()
    writer.flush()  # nothing pending: no empty shard
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["train-00000.safetensors", "train-00001.safetensors", "train-00002.safetensors"]
    assert writer.shards == 3
    sizes = []
    for name in files:
        with safe_open(str(tmp_path / "out" / name), framework="pt") as handle:
            sizes.append(len(json.loads(handle.metadata()["sample_ids"])))
            assert handle.get_tensor("x").shape[0] == sizes[-1]
    assert sizes == [3, 3, 1]


def read(in_dir, split):
    """A split through `split_columns`, the production reader: ids and each lazy column read whole."""
    ids, columns = split_columns(in_dir, split)
    assert all(isinstance(c, LazyColumn) and len(c) == len(ids) for c in columns.values())
    return ids, {k: c[:] for k, c in columns.items()}


def test_split_columns_give_ids_and_tensors_in_order(tmp_path):
    writer = ShardWriter(tmp_path, "val", shard_size=4)
    for start in range(0, 10, 2):  # batches of 2
        ids = [f"{i:03d}" for i in range(start, start + 2)]
        writer.add(ids, {k: torch.cat([sample(i)[k] for i in range(start, start + 2)]) for k in ("x", "ids")})
    writer.flush()
    assert writer.shards == 3  # 4 + 4 + 2
    ids, tensors = read(tmp_path, "val")
    assert ids == [f"{i:03d}" for i in range(10)]
    assert tensors["x"].shape == (10, 2, 3)
    assert tensors["x"][:, 0, 0].tolist() == [float(i) for i in range(10)]
    assert tensors["ids"].dtype == torch.long
    assert tensors["ids"][:, 0].tolist() == list(range(10))
    # Other splits in the same folder are not mixed in; a split without shards is empty.
    assert split_columns(tmp_path, "train") == ([], {})


def test_split_columns_order_more_than_ten_shards(tmp_path):
    writer = ShardWriter(tmp_path, "train", shard_size=1)
    for i in range(12):
        writer.add([str(i)], sample(i))
    writer.flush()
    ids, tensors = read(tmp_path, "train")
    assert ids == [str(i) for i in range(12)]
    assert tensors["x"][:, 0, 0].tolist() == [float(i) for i in range(12)]


def write_modality(root, modality, split, ids, value_of, shard_size=2):
    writer = ShardWriter(root / modality, split, shard_size)
    for sid in ids:
        writer.add([sid], {"v": torch.tensor([[value_of(sid), 1.0]]), "n": torch.tensor([[int(sid)]])})
    writer.flush()


def test_load_split_joins_modalities_with_masks(tmp_path):
    frame = pd.DataFrame({
        "sample_id": ["01", "02", "03", "04", "05", "06"],
        "label": ["b", "a", "b", "a", "b", "c"],
        "split": ["train", "train", "val", "train", "train", "train"],
    })
    # image: rows 01, 04, 05 (shards in another order than the manifest); audio: 02, 05.
    write_modality(tmp_path, "image", "train", ["05", "01", "04"], lambda s: 10.0 + int(s))
    write_modality(tmp_path, "audio", "train", ["02", "05"], lambda s: 20.0 + int(s))
    write_modality(tmp_path, "image", "val", ["03"], lambda s: 10.0 + int(s))

    data = load_split(frame, "train", ["a", "b", "c"], tmp_path, ["image", "audio"])
    assert isinstance(data, SplitData) and len(data) == 5
    assert data.sample_ids == ["01", "02", "04", "05", "06"]
    assert data.labels.tolist() == [1, 0, 0, 1, 2]
    assert data.modalities == ["image", "audio"]
    assert data.masks["image"].tolist() == [True, False, True, True, False]
    assert data.masks["audio"].tolist() == [False, True, False, True, False]
    assert data.inputs["image"]["v"][:, 0].tolist() == [11.0, 0.0, 14.0, 15.0, 0.0]
    assert data.inputs["audio"]["v"][:, 0].tolist() == [0.0, 22.0, 0.0, 25.0, 0.0]
    assert data.inputs["image"]["v"].shape == (5, 2)
    assert data.inputs["image"]["n"].dtype == torch.long
    assert data.inputs["audio"]["n"][:, 0].tolist() == [0, 2, 0, 5, 0]

    val = load_split(frame, "val", ["a", "b", "c"], tmp_path, ["image"])
    assert val.sample_ids == ["03"] and val.masks["image"].tolist() == [True]


def test_split_data_views(tmp_path):
    frame = pd.DataFrame({"sample_id": ["1", "2", "3"], "label": ["a", "b", "a"], "split": ["test"] * 3})
    write_modality(tmp_path, "image", "test", ["1", "3"], float)
    write_modality(tmp_path, "text", "test", ["2"], float)
    data = load_split(frame, "test", ["a", "b"], tmp_path, ["image", "text"])
    sub = data.take(torch.tensor([2, 0]))
    assert sub.sample_ids == ["3", "1"] and sub.labels.tolist() == [0, 0]
    assert sub.inputs["image"]["v"][:, 0].tolist() == [3.0, 1.0]
    only = data.only(["text"])
    assert only.modalities == ["text"] and list(only.masks) == ["text"]
    batches = list(data.batches(2))
    assert [b.sample_ids for b in batches] == [["1", "2"], ["3"]]
    shuffled = [b.sample_ids for b in data.batches(1, torch.Generator().manual_seed(0))]
    assert sorted(s for b in shuffled for s in b) == ["1", "2", "3"]


def test_load_split_rejects_shards_of_unknown_samples(tmp_path):
    frame = pd.DataFrame({"sample_id": ["1"], "label": ["a"], "split": ["train"]})
    write_modality(tmp_path, "image", "train", ["1", "9"], float)
    with pytest.raises(KeyError):
        load_split(frame, "train", ["a"], tmp_path, ["image"])


def test_modality_absent_from_a_whole_split_still_runs_through_the_model(tmp_path):
    from multimodal.modalities.base import FeatureInput
    from multimodal.models.model import Embedder, MultimodalModel

    frame = pd.DataFrame({"sample_id": ["1", "2", "3"], "label": ["a", "a", "b"],
                          "split": ["train", "val", "val"]})
    write_modality(tmp_path, "image", "train", ["1"], float)
    write_modality(tmp_path, "image", "val", [], float)  # no val sample has an image
    write_modality(tmp_path, "text", "val", ["2", "3"], float)
    data = load_split(frame, "val", ["a", "b"], tmp_path, ["image", "text"])
    assert data.masks["image"].tolist() == [False, False] and data.inputs["image"] == {}
    embedder = Embedder({"image": FeatureInput(2), "text": FeatureInput(2)}, dim=4)
    inputs = {"image": {}, "text": {"features": data.inputs["text"]["v"][:].float()}}  # a lazy column, read
    z = embedder(inputs, data.masks)
    assert z["image"].shape == (2, 4) and not z["image"].any()
    model = MultimodalModel(embedder, "gated", n_classes=2, dropout=0.0, fusion_knobs={})
    assert torch.isfinite(model(inputs, data.masks)).all()

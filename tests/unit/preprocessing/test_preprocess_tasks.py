"""Preprocessing as shard tasks: how rows are cut into tasks and batches, and that the files are byte-identical to
those of the loop they replace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors import safe_open

from multimodal.data.manifest import SPLITS
from multimodal.modalities import get_modality
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.preprocessing.shard_tasks import ShardError, ShardTask, shard_tasks, write_shard
from multimodal.storage.shards import ShardWriter
from tests.unit.conftest import repo_params

# 13 train rows, 6 val, 3 test, interleaved as in a manifest; every fifth row has no image.
N = 22
SPLIT_OF = ["train", "val", "train", "test", "train", "val", "train", "train"]


def manifest() -> pd.DataFrame:
    splits = [SPLIT_OF[i % len(SPLIT_OF)] for i in range(N)]
    return pd.DataFrame({
        "sample_id": [f"s{i:02d}" for i in range(N)],
        "split": splits,
        "label": ["a" if i % 2 else "b" for i in range(N)],
        "image": ["" if i % 5 == 4 else f"img/{i:02d}.png" for i in range(N)],
        "text": [f"sample {i} says {'yes ' * (i % 7)}" for i in range(N)],
    })


@pytest.fixture
def raw(tmp_path) -> Path:
    """Small PNGs of distinct content and sizes (the processor resizes them) for the rows that have an image."""
    rng = np.random.default_rng(0)
    for cell in manifest()["image"]:
        if cell:
            side = int(rng.integers(10, 40))
            path = tmp_path / "raw" / cell
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(path)
    return tmp_path / "raw"


def pre_change_loop(frame, root, out_dir, *, modality, spec, batch_size, shard_size) -> None:
    """The loop `preprocess_modality` ran before shard tasks: one writer per split fed batch after batch (batches
    straddled shard boundaries). Kept as the reference the task path must reproduce byte for byte."""
    mod = get_modality(modality)
    processor = mod.build_processor(spec)
    present = frame[frame[modality] != ""]
    for split in SPLITS:
        rows = present[present["split"] == split]
        writer = ShardWriter(out_dir, split, shard_size)
        for start in range(0, len(rows), batch_size):
            batch = rows.iloc[start : start + batch_size]
            items = [mod.load(cell, root, spec, processor) for cell in batch[modality]]
            stored = mod.stored(processor, items, spec)
            writer.add(batch["sample_id"].tolist(), stored.tensors, stored.codecs)
        writer.flush()


def shard_ids(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["sample_ids"])


def test_tasks_partition_the_rows_per_split_in_manifest_order():
    frame = manifest()
    tasks = shard_tasks(frame, "image", shard_size=4)
    present = frame[frame["image"] != ""]
    for split in SPLITS:
        mine = [t for t in tasks if t.split == split]
        rows = present[present["split"] == split]
        assert [t.shard for t in mine] == list(range(len(mine)))
        assert [i for t in mine for i in t.sample_ids] == rows["sample_id"].tolist()
        assert [c for t in mine for c in t.cells] == rows["image"].tolist()
        assert all(len(t.sample_ids) == 4 for t in mine[:-1]) and 1 <= len(mine[-1].sample_ids) <= 4
    # 11 train rows with an image (13 less 2), 5 val, 2 test.
    assert [(t.name, len(t.sample_ids)) for t in tasks] == [
        ("train-00000", 4), ("train-00001", 4), ("train-00002", 3), ("val-00000", 4), ("val-00001", 1),
        ("test-00000", 2)]
    assert shard_tasks(frame.drop(columns="image"), "image", 4) == []


def test_batches_restart_at_each_shard_when_shard_size_is_no_multiple_of_batch_size(tmp_path):
    spec = repo_params().modalities["text"]
    tasks = shard_tasks(manifest(), "text", shard_size=5)  # 13 train rows: 5 + 5 + 3
    batches = {}
    for task in tasks:
        batches[task.name] = []
        write_shard(task, tmp_path, tmp_path / "out", modality="text", spec=spec, batch_size=2, shard_size=5,
                    on_batch=batches[task.name].append)
    assert batches["train-00000"] == [2, 2, 1] and batches["train-00002"] == [2, 1]
    assert batches["val-00001"] == [1] and batches["test-00000"] == [2, 1]
    # Each task wrote exactly its own file, holding exactly its rows.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t.name}.safetensors" for t in tasks)
    assert all(shard_ids(tmp_path / "out" / f"{t.name}.safetensors") == list(t.sample_ids) for t in tasks)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_task_shards_are_byte_identical_to_the_pre_change_loop(tmp_path, raw, modality):
    spec, frame = repo_params().modalities[modality], manifest()
    sizes = dict(batch_size=2, shard_size=5)  # multi-shard splits, batches straddling shards in the old loop
    pre_change_loop(frame, raw, tmp_path / "old", modality=modality, spec=spec, **sizes)
    counts = preprocess_modality(frame, raw, tmp_path / "new", modality=modality, spec=spec, **sizes)
    old = sorted(p.name for p in (tmp_path / "old").iterdir())
    assert old == sorted(p.name for p in (tmp_path / "new").iterdir())
    assert {n.split("-")[0] for n in old} == set(SPLITS) and "train-00002.safetensors" in old
    for name in old:
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    assert counts == {"train": 11, "val": 5, "test": 2} if modality == "image" else {"train": 13, "val": 6, "test": 3}


def test_a_broken_file_is_named_with_its_shard_and_row(tmp_path, raw):
    (raw / "img/07.png").write_bytes(b"not a png")  # s07: train, the 4th train row with an image: shard 1
    with pytest.raises(ShardError, match=r"preprocess image: shard train-00001, row sample_id=s07 \(img/07.png\): "
                                         r"UnidentifiedImageError"):
        preprocess_modality(manifest(), raw, tmp_path / "out", modality="image", spec=repo_params().modalities["image"],
                            batch_size=2, shard_size=3)


def test_a_task_with_more_rows_than_a_shard_is_refused(tmp_path):
    task = ShardTask("train", 0, ("a", "b", "c"), ("x", "y", "z"))
    with pytest.raises(ValueError, match="shard train-00000 has 3 rows, more than shard_size=2"):
        write_shard(task, tmp_path, tmp_path, modality="text", spec=repo_params().modalities["text"], batch_size=2,
                    shard_size=2)

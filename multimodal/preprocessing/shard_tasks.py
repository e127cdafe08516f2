"""The unit of preprocessing work: one shard file, `<split>-NNNNN.safetensors`, written from its rows.

Run in this process (`multimodal.preprocessing.preprocess`) or as Ray tasks (`multimodal.preprocessing.ray_tasks`);
either way `write_shard` writes the file, so the files are byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.data.manifest import SPLITS
from multimodal.modalities import get_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.storage.shards import ShardWriter


@dataclass(frozen=True)
class ShardTask:
    """One shard file to write, `<split>-<shard:05d>.safetensors`, from these rows (sample ids and cells)."""

    split: str
    shard: int
    sample_ids: tuple[str, ...]
    cells: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.shard:05d}"


class ShardError(RuntimeError):
    """A shard task failed; the message names the modality, the shard and the row (or batch) that broke it."""


def shard_tasks(frame: pd.DataFrame, modality: str, shard_size: int) -> list[ShardTask]:
    """The rows that have `modality`, per split in manifest order, cut every `shard_size` rows."""
    if modality not in frame:
        return []
    present = frame[frame[modality] != ""]
    tasks = []
    for split in SPLITS:
        rows = present[present["split"] == split]
        ids, cells = rows["sample_id"].tolist(), rows[modality].tolist()
        for shard, start in enumerate(range(0, len(ids), shard_size)):
            stop = start + shard_size
            tasks.append(ShardTask(split, shard, tuple(ids[start:stop]), tuple(cells[start:stop])))
    return tasks


def write_shard(task: ShardTask, root: Path, out_dir: Path, *, modality: str, spec: ModalitySpec, batch_size: int,
                shard_size: int, processor: Any = None, on_batch: Callable[[int], object] | None = None) -> None:
    """Write exactly the file of `task`, processing its rows in batches of `batch_size` (restarting at the shard's
    first row: the modality contract makes a sample's tensors independent of the batch it is processed in).

    Errors name the shard and the row (its sample id and cell) or the batch that failed.
    """
    if len(task.sample_ids) > shard_size:
        raise ValueError(f"shard {task.name} has {len(task.sample_ids)} rows, more than shard_size={shard_size}")
    mod = get_modality(modality)
    processor = mod.build_processor(spec) if processor is None else processor
    where = f"preprocess {modality}: shard {task.name}"
    writer = ShardWriter(out_dir, task.split, shard_size, first_shard=task.shard)
    for start in range(0, len(task.sample_ids), batch_size):
        ids, cells = list(task.sample_ids[start : start + batch_size]), task.cells[start : start + batch_size]
        items = []
        for sample_id, cell in zip(ids, cells):
            try:
                items.append(mod.load(cell, root, spec, processor))
            except Exception as err:
                raise ShardError(f"{where}, row sample_id={sample_id} ({cell}): {type(err).__name__}: {err}") from err
        try:
            stored = mod.stored(processor, items, spec)  # compact where the modality declares it
        except Exception as err:
            raise ShardError(f"{where}, the batch of rows sample_id={ids[0]}..{ids[-1]}: "
                             f"{type(err).__name__}: {err}") from err
        writer.add(ids, stored.tensors, stored.codecs)
        if on_batch is not None:
            on_batch(len(ids))
    writer.flush()

"""Per-modality preprocessing: decode manifest cells in batches, run the HF processor, write sharded tensors.

The work is cut into shard tasks, one per `<split>-NNNNN.safetensors` file: here they run one after the other, on a
Ray cluster (`multimodal.preprocess_ray`) they run as Ray tasks. Either way each file is written by `write_shard`,
so the files are byte-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm import tqdm

from multimodal.config import ModalitySpec
from multimodal.manifest import SPLITS
from multimodal.modalities import get_modality
from multimodal.shards import ShardWriter

logger = logging.getLogger(__name__)


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


def run_locally(tasks: list[ShardTask], root: Path, out_dir: Path, *, modality: str, spec: ModalitySpec,
                batch_size: int, shard_size: int) -> None:
    """The tasks in order, in this process, one processor for all; a progress bar over samples."""
    logger.info("preprocess %s in this process: %d tasks", modality, len(tasks))
    processor = get_modality(modality).build_processor(spec)
    with tqdm(total=sum(len(t.sample_ids) for t in tasks), desc=f"preprocess {modality}", unit="sample") as bar:
        for task in tasks:
            write_shard(task, root, out_dir, modality=modality, spec=spec, batch_size=batch_size,
                        shard_size=shard_size, processor=processor, on_batch=bar.update)


def preprocess_modality(
    frame: pd.DataFrame, root: Path, out_dir: Path, *, modality: str, spec: ModalitySpec, batch_size: int,
    shard_size: int, address: str | None = None, project_dir: Path | None = None,
) -> dict[str, int]:
    """Write `<out_dir>/<split>-NNNNN.safetensors` for the rows that have `modality`; return counts per split.

    `address`: a Ray cluster to run the shard tasks on (see `multimodal.preprocess_ray` for what its nodes need;
    `project_dir` is where Ray keeps its HOME); None runs them here, in plain Python, never on a local Ray.
    """
    tasks = shard_tasks(frame, modality, shard_size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(modality=modality, spec=spec, batch_size=batch_size, shard_size=shard_size)
    if address:
        from multimodal.preprocess_ray import run_on_ray

        run_on_ray(tasks, Path(root), Path(out_dir), address=address, project_dir=project_dir or Path.cwd(), **kwargs)
    else:
        run_locally(tasks, Path(root), Path(out_dir), **kwargs)
    counts = {split: sum(len(t.sample_ids) for t in tasks if t.split == split) for split in SPLITS}
    logger.info("%s: %s samples per split", modality, counts)
    return counts

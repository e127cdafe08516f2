"""Per-modality preprocessing: decode manifest cells in batches, run the HF processor, write sharded tensors.

The work is cut into shard tasks (`multimodal.preprocessing.shard_tasks`), one per `<split>-NNNNN.safetensors`
file: here they run one after the other, on a Ray cluster (`multimodal.preprocessing.ray_tasks`) they run as Ray
tasks. Either way each file is written by `write_shard`, so the files are byte-identical.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from multimodal.data.manifest import SPLITS
from multimodal.modalities import get_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.preprocessing.ray_tasks import run_on_ray
from multimodal.preprocessing.shard_tasks import ShardTask, shard_tasks, write_shard

logger = logging.getLogger(__name__)


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

    `address`: a Ray cluster to run the shard tasks on (see `multimodal.preprocessing.ray_tasks` for what its nodes
    need;
    `project_dir` is where Ray keeps its HOME); None runs them here, in plain Python, never on a local Ray.
    """
    tasks = shard_tasks(frame, modality, shard_size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(modality=modality, spec=spec, batch_size=batch_size, shard_size=shard_size)
    if address:
        run_on_ray(tasks, Path(root), Path(out_dir), address=address, project_dir=project_dir or Path.cwd(), **kwargs)
    else:
        run_locally(tasks, Path(root), Path(out_dir), **kwargs)
    counts = {split: sum(len(t.sample_ids) for t in tasks if t.split == split) for split in SPLITS}
    logger.info("%s: %s samples per split", modality, counts)
    return counts

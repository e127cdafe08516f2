"""Per-modality preprocessing: decode manifest cells in batches, run the HF processor, write sharded tensors."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from multimodal.config import ModalitySpec
from multimodal.manifest import SPLITS
from multimodal.modalities import get_modality
from multimodal.shards import ShardWriter

logger = logging.getLogger(__name__)


def preprocess_modality(
    frame: pd.DataFrame, root: Path, out_dir: Path, *, modality: str, spec: ModalitySpec, batch_size: int, shard_size: int
) -> dict[str, int]:
    """Write `<out_dir>/<split>-NNNNN.safetensors` for the rows that have `modality`; return counts per split."""
    mod = get_modality(modality)
    processor = mod.build_processor(spec)
    present = frame[frame[modality] != ""] if modality in frame else frame.iloc[0:0]
    counts = {}
    for split in SPLITS:
        rows = present[present["split"] == split]
        writer = ShardWriter(out_dir, split, shard_size)
        bar = tqdm(total=len(rows), desc=f"preprocess {modality}/{split}", unit="sample")
        for start in range(0, len(rows), batch_size):
            batch = rows.iloc[start : start + batch_size]
            items = [mod.load(cell, root, spec, processor) for cell in batch[modality]]
            stored = mod.stored(processor, items, spec)  # compact where the modality declares it
            writer.add(batch["sample_id"].tolist(), stored.tensors, stored.codecs)
            bar.update(len(batch))
        writer.flush()
        bar.close()
        counts[split] = len(rows)
    logger.info("%s: %s samples per split", modality, counts)
    return counts

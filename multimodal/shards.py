"""Sharded safetensors per split: `<dir>/<split>-00000.safetensors`, sample ids kept in the shard metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file


class ShardWriter:
    """Accumulates batches and flushes a shard every `shard_size` samples, so memory stays bounded."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, first_shard: int = 0):
        self.out_dir, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._ids: list[str] = []
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._count = 0
        # Index of the next file (the count written, from 0); a task writing shard k of a split starts at k.
        self.shards = first_shard

    def add(self, sample_ids: list[str], tensors: dict[str, torch.Tensor]) -> None:
        # Split the batch at shard boundaries so every shard but the last holds exactly `shard_size` samples.
        start = 0
        while start < len(sample_ids):
            take = min(self.shard_size - self._count, len(sample_ids) - start)
            self._ids.extend(sample_ids[start : start + take])
            for key, value in tensors.items():
                self._parts.setdefault(key, []).append(value[start : start + take])
            self._count += take
            start += take
            if self._count >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in self._parts.items()}
        path = self.out_dir / f"{self.split}-{self.shards:05d}.safetensors"
        save_file(tensors, str(path), metadata={"sample_ids": json.dumps(self._ids)})
        self.shards += 1
        self._ids, self._parts, self._count = [], {}, 0


def read_split(in_dir: Path, split: str, tensors: bool = True) -> tuple[list[str], dict[str, torch.Tensor]]:
    """All shards of one split, concatenated; ([], {}) when the split has none.

    `tensors=False` reads only the sample ids (from the metadata): enough where cached features replace the inputs.
    """
    ids: list[str] = []
    parts: dict[str, list[torch.Tensor]] = {}
    for path in sorted(Path(in_dir).glob(f"{split}-*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            ids.extend(json.loads(handle.metadata()["sample_ids"]))
        if tensors:
            for key, value in load_file(str(path)).items():
                parts.setdefault(key, []).append(value)
    return ids, {k: torch.cat(v) for k, v in parts.items()}

"""Sharded safetensors per split: `<dir>/<split>-00000.safetensors`, sample ids kept in the shard metadata.

Tensors are stored compactly (`multimodal.storage.codecs`): integers as int32, pixels as uint8 where the modality
declares it (`Modality.store`); each shard records its codecs in its metadata (`codecs`), so reading needs nothing
else.
`split_columns` reads a split lazily (`multimodal.storage.columns.LazyColumn`: rows are read and decoded when
indexed); `multimodal.storage.dataset.load_split` joins the modalities' columns onto the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from multimodal.storage.codecs import Codec, default_codec
from multimodal.storage.columns import LazyColumn, read_header, write_tensors
from multimodal.storage.header import CorruptFile, metadata_json


class ShardWriter:
    """Accumulates batches and flushes a shard every `shard_size` samples, so memory stays bounded."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, first_shard: int = 0):
        self.out_dir, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._ids: list[str] = []
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._codecs: dict[str, Codec | None] = {}
        self._count = 0
        # Index of the next file (the count written, from 0); a task writing shard k of a split starts at k.
        self.shards = first_shard

    def add(self, sample_ids: list[str], tensors: dict[str, torch.Tensor],
            codecs: dict[str, Codec] | None = None) -> None:
        """A batch of processor outputs; `codecs[key]`: the codec `tensors[key]` is already encoded with
        (`Modality.store`). Other integer tensors are narrowed here (`codecs.default_codec`)."""
        tensors = self._encoded(tensors, codecs or {})
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

    def _encoded(self, tensors: dict[str, torch.Tensor], codecs: dict[str, Codec]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in tensors.items():
            codec = codecs.get(key)
            if codec is None and (codec := default_codec(value)) is not None:
                value = codec.encode(key, value)
            if self._codecs.setdefault(key, codec) != codec:
                raise ValueError(f"{key}: stored as {self._codecs[key]} and as {codec} in one {self.split} split")
            out[key] = value
        return out

    def flush(self) -> None:
        if not self._ids:
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in self._parts.items()}
        path = self.out_dir / f"{self.split}-{self.shards:05d}.safetensors"
        codecs = {k: c.meta() for k, c in sorted(self._codecs.items()) if c is not None}
        write_tensors(path, tensors, {"sample_ids": json.dumps(self._ids), "codecs": json.dumps(codecs)})
        self.shards += 1
        self._ids, self._parts, self._count = [], {}, 0


def shard_paths(in_dir: Path, split: str) -> list[Path]:
    return sorted(Path(in_dir).glob(f"{split}-*.safetensors"))


def split_columns(in_dir: Path, split: str, tensors: bool = True) -> tuple[list[str], dict[str, LazyColumn]]:
    """Sample ids of every shard of one split, in shard order, and a lazy column per key over all of them (only
    the shard headers are read); ([], {}) when the split has none. `tensors=False`: the ids only."""
    ids: list[str] = []
    segments: dict[str, list] = {}
    for path in shard_paths(in_dir, split):
        metadata, found = read_header(path)
        shard_ids = metadata_json(path, metadata, "sample_ids")
        if not isinstance(shard_ids, list) or not all(isinstance(s, str) for s in shard_ids):
            raise CorruptFile(path, "metadata 'sample_ids' is not a list of strings")
        ids.extend(shard_ids)
        for key, segment in found.items() if tensors else ():
            if segment.rows != len(shard_ids):
                raise CorruptFile(path, f"{key} has {segment.rows} rows for {len(shard_ids)} sample ids")
            segments.setdefault(key, []).append(segment)
    columns = {}
    for key, parts in segments.items():
        if sum(s.rows for s in parts) != len(ids):
            raise ValueError(f"{in_dir}: {key} is missing from some {split} shards")
        columns[key] = LazyColumn(parts, torch.cat([torch.full((s.rows,), i) for i, s in enumerate(parts)]),
                                  torch.cat([torch.arange(s.rows) for s in parts]))
    return ids, columns


"""Joins the per-modality shards of one split by `sample_id`, with a presence mask per modality."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from multimodal.shards import read_split


@dataclass
class SplitData:
    """Dense tensors for one split: `inputs[modality][key]` is (N, ...); rows lacking a modality are zeros."""

    sample_ids: list[str]
    labels: torch.Tensor
    inputs: dict[str, dict[str, torch.Tensor]]
    masks: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def take(self, index: torch.Tensor) -> "SplitData":
        return SplitData(
            [self.sample_ids[i] for i in index.tolist()],
            self.labels[index],
            {m: {k: v[index] for k, v in d.items()} for m, d in self.inputs.items()},
            {m: v[index] for m, v in self.masks.items()},
        )

    def any_present(self) -> torch.Tensor:
        """(N,) bool: rows holding at least one of this data's modalities (what a model of them can see)."""
        return torch.stack(list(self.masks.values())).any(dim=0)

    def only(self, modalities: list[str]) -> "SplitData":
        """A view restricted to some modalities (unimodal baselines and ablations)."""
        return SplitData(self.sample_ids, self.labels, {m: self.inputs[m] for m in modalities},
                         {m: self.masks[m] for m in modalities})

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator["SplitData"]:
        """Mini-batches; shuffled when a generator is given (seeded by the caller)."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.take(order[start : start + batch_size])

    def to(self, device: torch.device) -> "SplitData":
        return SplitData(self.sample_ids, self.labels.to(device),
                         {m: {k: v.to(device) for k, v in d.items()} for m, d in self.inputs.items()},
                         {m: v.to(device) for m, v in self.masks.items()})


def load_split(frame: pd.DataFrame, split: str, labels: list[str], preprocessed: Path, modalities: list[str],
               masks_only: Collection[str] = ()) -> SplitData:
    """Join `<preprocessed>/<modality>/<split>-*.safetensors` onto the manifest rows of `split`.

    Modalities in `masks_only` get their presence mask but no inputs (`{}`): callers that swap in cached
    features for them skip reading the raw tensors (most of the bytes).
    """
    rows = frame[frame["split"] == split]
    ids = rows["sample_id"].tolist()
    position = {sid: i for i, sid in enumerate(ids)}
    label_index = {name: i for i, name in enumerate(labels)}
    inputs, masks = {}, {}
    for modality in modalities:
        shard_ids, tensors = read_split(Path(preprocessed) / modality, split, tensors=modality not in masks_only)
        rows_at = torch.tensor([position[s] for s in shard_ids], dtype=torch.long)
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[rows_at] = True
        dense = {}
        for key, value in tensors.items():
            full = torch.zeros((len(ids), *value.shape[1:]), dtype=value.dtype)
            full[rows_at] = value
            dense[key] = full
        inputs[modality], masks[modality] = dense, mask
    y = torch.tensor([label_index[str(v)] for v in rows["label"]], dtype=torch.long)
    return SplitData(ids, y, inputs, masks)

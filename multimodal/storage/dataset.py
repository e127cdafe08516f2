"""Joins the per-modality shards of one split by `sample_id`, with a presence mask per modality."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimodal.storage.columns import LazyColumn
from multimodal.storage.shards import split_columns

Column = torch.Tensor | LazyColumn


@dataclass
class SplitData:
    """One split: `inputs[modality][key]` is (N, ...), in memory or a `LazyColumn` read on demand (what
    `load_split` gives); rows lacking a modality are zeros. `take` keeps lazy columns lazy, `batches` hold tensors.
    """

    sample_ids: list[str]
    labels: torch.Tensor
    inputs: dict[str, dict[str, Column]]
    masks: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def take(self, index: torch.Tensor) -> "SplitData":
        """The rows `index`; lazy columns stay lazy (nothing is read)."""
        return self._rows(index, lambda v: v.take(index) if isinstance(v, LazyColumn) else v[index])

    def batch(self, index: torch.Tensor) -> "SplitData":
        """The rows `index` with every input in memory (lazy columns read)."""
        return self._rows(index, lambda v: v[index])

    def _rows(self, index: torch.Tensor, pick) -> "SplitData":
        return SplitData(
            [self.sample_ids[i] for i in index.tolist()],
            self.labels[index],
            {m: {k: pick(v) for k, v in d.items()} for m, d in self.inputs.items()},
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
            yield self.batch(order[start : start + batch_size])

    def to(self, device: torch.device) -> "SplitData":
        """Every input moved to `device`; lazy columns cannot be (take `batches`)."""
        lazy = [f"{m}.{k}" for m, d in self.inputs.items() for k, v in d.items() if isinstance(v, LazyColumn)]
        if lazy:
            raise TypeError(f"inputs {lazy} are read on demand: move `batches()` to a device, not the whole split")
        return SplitData(self.sample_ids, self.labels.to(device),
                         {m: {k: v.to(device) for k, v in d.items()} for m, d in self.inputs.items()},
                         {m: v.to(device) for m, v in self.masks.items()})


def load_split(frame: pd.DataFrame, split: str, labels: list[str], preprocessed: Path, modalities: list[str],
               masks_only: Collection[str] = ()) -> SplitData:
    """Join `<preprocessed>/<modality>/<split>-*.safetensors` onto the manifest rows of `split`.

    Inputs are lazy columns: only the shard headers are read here, rows when a batch is taken. Modalities in
    `masks_only` get their presence mask but no inputs (`{}`): callers that swap in cached features for them.
    """
    rows = frame[frame["split"] == split]
    ids = rows["sample_id"].tolist()
    position = {sid: i for i, sid in enumerate(ids)}
    label_index = {name: i for i, name in enumerate(labels)}
    inputs, masks = {}, {}
    for modality in modalities:
        shard_ids, columns = split_columns(Path(preprocessed) / modality, split, tensors=modality not in masks_only)
        rows_at = torch.tensor([position[s] for s in shard_ids], dtype=torch.long)
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[rows_at] = True
        # Manifest row -> (shard, row in shard); -1 where the sample lacks the modality (read as zeros).
        inputs[modality] = {key: _placed(column, rows_at, len(ids)) for key, column in columns.items()}
        masks[modality] = mask
    y = torch.tensor([label_index[str(v)] for v in rows["label"]], dtype=torch.long)
    return SplitData(ids, y, inputs, masks)


def _placed(column: LazyColumn, rows_at: torch.Tensor, n: int) -> LazyColumn:
    """`column` (shard order) re-indexed to the `n` manifest rows: its row i becomes row `rows_at[i]`."""
    segment_of, row_of = torch.full((n,), -1), torch.zeros(n, dtype=torch.long)
    segment_of[rows_at], row_of[rows_at] = column.segment_of, column.row_of
    return LazyColumn(column.segments, segment_of, row_of)


def in_row_chunks(tensors: Mapping[str, Column], fn: Callable[[dict[str, torch.Tensor]], torch.Tensor | np.ndarray],
                  rows: int = 256) -> np.ndarray:
    """`fn` (a row-wise function of a batch of tensors) over every row, `rows` at a time, concatenated: the whole
    of a lazy column is never in memory at once."""
    n = len(next(iter(tensors.values())))
    starts = range(0, n, rows) if n else [0]
    return np.concatenate([np.asarray(fn({k: v[start : start + rows] for k, v in tensors.items()}))
                           for start in starts])

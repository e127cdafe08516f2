"""Predictions of a saved model for a new manifest: one output row per input row, in input order.

The manifest follows the dataset contract of ingest (`multimodal.data.manifest`), except that `label` is optional and
`split` is ignored; cells are decoded and processed exactly as preprocess does (each modality's `load` and
`process`, with the processing settings saved beside the model, `multimodal.models.bundle`). Any modality may be missing
from a row. A cell that cannot be read (missing or corrupt file, a path leaving the manifest's folder) drops that
modality for its row and is named in the row's `error`; a row left with no modality gets no prediction. A bad row
never stops the others. Rows are read, processed and predicted in batches, so memory follows the batch size.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from multimodal.data.manifest import modality_columns, read_manifest
from multimodal.modalities import get_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import load_for_raw_inputs
from multimodal.models.classical import is_classical, load_classical_for_raw_inputs
from multimodal.models.ensemble import EnsembleModel, EnsembleSpec, is_ensemble
from multimodal.models.model import ModelSpec
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import atomic_text
from multimodal.training.train import predict as predict_probs

logger = logging.getLogger(__name__)

REQUIRED = ("sample_id",)  # `label` is optional here: with it, accuracy on the labelled rows is reported


@dataclass(frozen=True)
class ManifestCellReader:
    """How one modality's manifest cells become model inputs: its decoder and processor, as in preprocess."""

    modality: str
    spec: ModalitySpec
    processor: Any

    @classmethod
    def build(cls, modality: str, spec: ModalitySpec) -> "ManifestCellReader":
        return cls(modality, spec, get_modality(modality).build_processor(spec))

    def _process(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        return get_modality(self.modality).process(self.processor, items, self.spec)

    def read(self, cells: Sequence[str], root: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[int, str]]:
        """Inputs (N, ...) with zeros where absent, the presence mask (N,), and an error per row that failed."""
        mod = get_modality(self.modality)
        items, rows, errors = [], [], {}
        for i, cell in enumerate(cells):
            if not cell:
                continue
            try:
                items.append(mod.load(cell, root, self.spec, self.processor))
                rows.append(i)
            except Exception as err:  # noqa: BLE001 - any failure of one cell is that row's error, not the run's
                errors[i] = f"{self.modality} {cell!r}: {type(err).__name__}: {err}"
        processed = self._process_each(items, rows, errors)
        mask = torch.zeros(len(cells), dtype=torch.bool)
        if not processed:
            return {}, mask, errors
        kept = torch.tensor(sorted(processed), dtype=torch.long)
        mask[kept] = True
        inputs = {}
        for key in processed[int(kept[0])]:
            values = torch.stack([processed[int(i)][key] for i in kept])
            inputs[key] = torch.zeros((len(cells), *values.shape[1:]), dtype=values.dtype).index_copy(0, kept, values)
        return inputs, mask, errors

    def _process_each(self, items: list[Any], rows: list[int], errors: dict[int, str]) -> dict[int, dict]:
        """Row -> its processed tensors: the batch at once, or item by item when the batch fails (to name the row)."""
        if not items:
            return {}
        try:
            batch = self._process(items)
            return {row: {k: v[j] for k, v in batch.items()} for j, row in enumerate(rows)}
        except Exception:  # noqa: BLE001 - retried one by one below, so the failing row is the one named
            pass
        out = {}
        for item, row in zip(items, rows):
            try:
                out[row] = {k: v[0] for k, v in self._process([item]).items()}
            except Exception as err:  # noqa: BLE001
                errors[row] = f"{self.modality}: cannot process: {type(err).__name__}: {err}"
        return out


def read_batch(rows: pd.DataFrame, readers: dict[str, ManifestCellReader], root: Path
               ) -> tuple[SplitData, list[list[str]]]:
    """The model inputs of `rows` (every modality in `readers`; absent ones masked) and each row's errors."""
    n = len(rows)
    inputs, masks, errors = {}, {}, [[] for _ in range(n)]
    for modality, reader in readers.items():
        cells = rows[modality].tolist() if modality in rows else [""] * n
        inputs[modality], masks[modality], failed = reader.read(cells, root)
        for i, message in failed.items():
            errors[i].append(message)
    return SplitData(rows["sample_id"].tolist(), torch.zeros(n, dtype=torch.long), inputs, masks), errors


def output_columns(labels: Sequence[str]) -> list[str]:
    return ["sample_id", "predicted", *(f"p_{label}" for label in labels), "modalities_used", "error"]


def predict_batch(model: torch.nn.Module, labels: Sequence[str], data: SplitData, errors: list[list[str]],
                  device: torch.device) -> list[list[Any]]:
    """Output rows for one batch: a prediction where some modality was read, else empty cells and the error."""
    present = data.any_present()
    probs = torch.empty(0, len(labels))
    if present.any():
        probs = predict_probs(model, data.take(present.nonzero().flatten()), len(data), device)
    out, next_prob = [], iter(probs.tolist())
    for i, sample_id in enumerate(data.sample_ids):
        used = "+".join(m for m in data.modalities if data.masks[m][i])
        if present[i]:
            p = next(next_prob)
            out.append([sample_id, labels[max(range(len(p)), key=p.__getitem__)], *p, used, "; ".join(errors[i])])
        else:
            message = "; ".join([*errors[i], "no modality left to predict from"])
            out.append([sample_id, "", *[""] * len(labels), "", message])
    return out


@dataclass
class Summary:
    rows: int = 0
    predicted: int = 0
    with_errors: int = 0
    labelled: int = 0  # labelled rows that got a prediction
    correct: int = 0
    labelled_unpredicted: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def add(self, rows: list[list[Any]], labels: list[str] | None) -> None:
        for row, label in zip(rows, labels or [""] * len(rows)):
            self.rows += 1
            self.predicted += row[1] != ""
            self.with_errors += row[-1] != ""
            if label:
                self.labelled += row[1] != ""
                self.correct += row[1] != "" and row[1] == label
                self.labelled_unpredicted += row[1] == ""


def load_any_for_raw_inputs(folder: Path, device: torch.device
                            ) -> tuple[torch.nn.Module, ModelSpec, dict[str, ModalitySpec]]:
    """Any saved model folder as (a module taking processor tensors, its spec, each modality's processing): an
    ensemble (`ensemble.json`), a classical baseline (`classical.json`) or a deep model."""
    if is_ensemble(folder):
        return load_ensemble_for_raw_inputs(folder, device)
    if is_classical(folder):
        return load_classical_for_raw_inputs(folder, device)
    return load_for_raw_inputs(folder, device)


def load_ensemble_for_raw_inputs(folder: Path, device: torch.device
                                 ) -> tuple[EnsembleModel, ModelSpec, dict[str, ModalitySpec]]:
    """An ensemble folder (`ensemble.json`) as one model of its members (deep or classical, each by its folder
    relative to the ensemble's), a spec naming the modalities any member reads, and their processing settings
    (each modality's from the first member reading it)."""
    ensemble = EnsembleSpec.load(folder)
    unsaved = [m.name for m in ensemble.members if not m.path]
    if unsaved:
        raise ValueError(f"{folder}: the ensemble names members {unsaved} without a model folder (written before "
                         "the classical baselines were saved as models): re-run `dvc repro baseline ensemble`, or "
                         f"predict with its single best model ({ensemble.single_best})")
    models, reads, processing, first = [], [], {}, None
    for member in ensemble.members:
        model, spec, settings = load_any_for_raw_inputs(folder / member.path, device)
        models.append(model)
        reads.append(spec.modalities)
        first = first or spec
        for modality in spec.modalities:
            processing.setdefault(modality, settings[modality])
    # What predict reads of a spec: the modalities (any member's) and the labels.
    spec = ModelSpec(list(processing), {}, first.labels, first.dim, "ensemble", 0.0, {}, {})
    return EnsembleModel(models, reads, [m.weight for m in ensemble.members]).eval(), spec, processing


def predict_manifest(model_dir: Path, manifest: Path, out: Path, batch_size: int, device: torch.device) -> Summary:
    """Write `out` (CSV, `output_columns`) with one row per row of `manifest`; return counts and accuracy. A model
    folder holding `ensemble.json` predicts as its weighted members, one holding `classical.json` as that baseline."""
    # 1. The model with an encoder for every modality, and the readers preprocess used for them.
    model, spec, processing = load_any_for_raw_inputs(model_dir, device)
    readers = {m: ManifestCellReader.build(m, processing[m]) for m in spec.modalities}
    frame = read_manifest(manifest, required=REQUIRED)
    unused = [m for m in modality_columns(frame) if m not in readers]
    if unused:
        logger.warning("columns %s are ignored: the model reads %s", unused, spec.modalities)
    if not any(m in frame for m in readers):
        logger.warning("%s has none of the model's modality columns %s: no row can be predicted", manifest,
                       spec.modalities)
    labels = [str(v) for v in frame["label"]] if "label" in frame else None
    # 2. Batches: read, process, predict, write; the manifest's folder is the root its paths may not leave.
    summary = Summary()
    with atomic_text(out, newline="") as handle, tqdm(total=len(frame), desc="predict", unit="sample") as bar:
        writer = csv.writer(handle)
        writer.writerow(output_columns(spec.labels))
        for start in range(0, len(frame), batch_size):
            rows = frame.iloc[start : start + batch_size]
            data, errors = read_batch(rows, readers, manifest.parent)
            written = predict_batch(model, spec.labels, data, errors, device)
            writer.writerows(written)
            summary.add(written, labels and labels[start : start + batch_size])
            bar.update(len(rows))
    return summary

"""Why the fused model predicted what it did, on a few test rows the report shows (`evaluate.explain`).

Rows are picked by a rule seeded from `base.seed`: among the rows holding every modality of the model (else any
row it sees), half predicted right and half wrong (the other kind fills in when one runs short), drawn at
random, shown in test order. For each: the prediction and its calibrated probability, each modality's
contribution (`multimodal.models.explain.with_contributions`), and for each modality read from a float input
(image pixels, a spectrogram) an Integrated Gradients map over that input.

Written under `<plots>/evaluate/explanations/` for the report to draw (it computes nothing):
- `rows.json`: a record per row (sample_id, label, predicted, probability, correct, contributions {m: value},
  cells {m: the manifest cell}, maps {m: {input, attribution, key, layout, completeness: [sum, f(x) - f(ref)]}});
- `maps.safetensors`: the 2-D arrays the records name: an input reduced for display (the mean over channels of a
  (C, H, W) image; a (frames, features) sequence transposed to features x frames) and its attribution reduced the
  same way (summed over channels).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from multimodal.evaluation.scoring import ABSTAIN, rng_for
from multimodal.modalities.base import FeatureInput
from multimodal.models.explain import integrated_gradients, with_contributions
from multimodal.storage.io import atomic_dir, write_json

logger = logging.getLogger(__name__)

ROWS, MAPS = "rows.json", "maps.safetensors"


def pick_rows(y: np.ndarray, pred: np.ndarray, complete: np.ndarray, count: int, seed: int) -> list[int]:
    """`count` test rows (indices, ascending): half right, half wrong, among the `complete` rows if enough."""
    seen = pred != ABSTAIN
    pool = seen & complete if (seen & complete).sum() >= count else seen
    right, wrong = np.flatnonzero(pool & (pred == y)), np.flatnonzero(pool & (pred != y))
    rng = rng_for(seed, "explain")
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))  # wrong ones fill in for missing right ones
    n_right = min(len(right), count - n_wrong)
    chosen = [*rng.choice(right, n_right, replace=False), *rng.choice(wrong, n_wrong, replace=False)]
    return sorted(int(i) for i in chosen)


def _display(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """A row's input or attribution as a 2-D picture: (C, H, W) over channels; (frames, features) transposed."""
    if values.dim() == 3:
        return values.mean(0) if reduce == "mean" else values.sum(0)
    return values.T if values.dim() == 2 else values.reshape(1, -1)


def explain_rows(reader, rows: Sequence[int], y: np.ndarray, labels: Sequence[str], cells: Mapping[str, Sequence[str]],
                 steps: int, device: torch.device) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Records and arrays (`rows.json`, `maps.safetensors`) of the fused model's `reader` (ModelOnTestSplit) on
    test rows `rows`; `cells[m][i]` is row i's manifest cell of modality m."""
    if not rows:
        return [], {}
    index = torch.tensor(list(rows), dtype=torch.long)
    data = reader.data.batch(index).to(device)  # in memory: the gradients need tensors
    probs, contrib = with_contributions(reader.model, data, reader.temperature, len(data), device)
    target = probs.argmax(dim=1).to(device)
    attributions = {}
    for modality, inputs in data.inputs.items():
        floats = [k for k, v in inputs.items() if v.is_floating_point()]
        if isinstance(reader.model.embedder.encoders[modality], FeatureInput) or not floats:
            continue  # read as cached features (no encoder here) or as token ids: no map over the input
        attributions[modality] = (floats[0], *integrated_gradients(reader.model, data, modality, floats[0], target,
                                                                     reader.temperature, steps))
    records, arrays = [], {}
    for j, i in enumerate(rows):
        predicted = int(probs[j].argmax())
        record = {"sample_id": reader.data.sample_ids[i], "label": labels[int(y[i])], "predicted": labels[predicted],
                  "probability": float(probs[j, predicted]), "correct": predicted == int(y[i]),
                  "contributions": {m: None if torch.isnan(v[j]) else float(v[j]) for m, v in contrib.items()},
                  "cells": {m: str(cells[m][i]) for m in cells}, "maps": {}}
        for modality, (key, attribution, gap) in attributions.items():
            if not data.masks[modality][j]:
                continue
            name = f"row{j}/{modality}"
            arrays[f"{name}/input"] = _display(data.inputs[modality][key][j].detach().cpu().float(), "mean")
            arrays[f"{name}/attribution"] = _display(attribution[j].detach().cpu().float(), "sum")
            # `sequence`: features x frames, low features at the bottom; `picture`: drawn top row first.
            layout = "sequence" if data.inputs[modality][key][j].dim() == 2 else "picture"
            record["maps"][modality] = {"key": key, "input": f"{name}/input", "attribution": f"{name}/attribution",
                                        "layout": layout,
                                        "completeness": [float(attribution[j].sum()), float(gap[j])]}
        records.append(record)
    return records, arrays


def write_explanations(out_dir: Path, records: list[dict], arrays: dict[str, torch.Tensor]) -> None:
    """`out_dir` (replaced whole) with `rows.json` and `maps.safetensors`."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / ROWS, records, sort_keys=False)
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp / MAPS))

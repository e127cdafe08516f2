"""Why a model predicted what it did: per-modality contributions (for `predict` and the report) and Integrated
Gradients maps over an input (image, spectrogram) for the report.

The model is mask-aware, so removing a modality is switching its mask off; a modality's contribution on a row is

    contrib_m = P(predicted class | every present modality) - P(predicted class | the same row, m's mask off)

at the model's temperature (`multimodal.models.temperature`): one extra forward pass per present modality. A row
holding m alone is compared with the model's output given no modality at all (a constant: its prior). Absent
modalities get NaN (no contribution measured, not zero).
"""

from __future__ import annotations

import torch
from torch import nn

from multimodal.storage.dataset import SplitData


def mask_off(data: SplitData, modality: str) -> SplitData:
    """`data` with `modality` marked missing on every row (its inputs stay; the model skips them)."""
    return SplitData(data.sample_ids, data.labels, data.inputs,
                     {m: torch.zeros_like(v) if m == modality else v for m, v in data.masks.items()})


@torch.no_grad()
def probabilities(model: nn.Module, data: SplitData, temperature: float, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """(N, C) softmax(logits / temperature) of `data`, in its order, on the CPU."""
    model.eval()
    out = [torch.softmax(model(b.inputs, b.masks).float() / temperature, dim=-1).cpu()
           for b in (batch.to(device) for batch in data.batches(batch_size))]
    return torch.cat(out) if out else torch.empty(0)


def modality_contributions(model: nn.Module, data: SplitData, probs: torch.Tensor, temperature: float,
                           batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """{modality: (N,) contribution to the predicted class's probability} for `data`, whose rows' probabilities
    (at `temperature`) are `probs`; NaN where the row lacks the modality. Only rows holding m are passed again."""
    predicted = probs.argmax(dim=1)
    out = {}
    for modality in data.modalities:
        values = torch.full((len(data),), float("nan"))
        rows = data.masks[modality].nonzero().flatten()
        if len(rows):
            without = probabilities(model, mask_off(data.take(rows), modality), temperature, batch_size, device)
            values[rows] = probs[rows, predicted[rows]] - without.gather(1, predicted[rows, None]).squeeze(1)
        out[modality] = values
    return out

"""Why a model predicted what it did: per-modality contributions (for `predict` and the report) and Integrated
Gradients maps over an input (image, spectrogram) for the report.

The model is mask-aware, so removing a modality is switching its mask off; a modality's contribution on a row is

    contrib_m = P(predicted class | every present modality) - P(predicted class | the same row, m's mask off)

at the model's temperature (`multimodal.models.temperature`): one extra pass of the fusion and head per modality
(the encoders run once). A row
holding m alone is compared with the model's output given no modality at all (a constant: its prior). Absent
modalities get NaN (no contribution measured, not zero).
"""

from __future__ import annotations

import torch
from torch import nn

from multimodal.models.model import MultimodalModel
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


def modality_contributions(model: MultimodalModel, data: SplitData, probs: torch.Tensor, temperature: float,
                           batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """{modality: (N,) contribution to the predicted class's probability} for `data`, whose rows' probabilities
    (at `temperature`) are `probs`; NaN where the row lacks the modality.

    The encoders run once per row: a modality's embedding does not depend on the others' masks, so each pass with
    one mask off re-runs the fusion and head only (`MultimodalModel.classify`: equal to a whole forward pass with
    that mask off, the masked modality's embedding being zeros as `Embedder` gives an absent one)."""
    predicted = probs.argmax(dim=1)
    out = {m: torch.full((len(data),), float("nan")) for m in data.modalities}
    model.eval()
    start = 0
    with torch.no_grad():
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            rows = torch.arange(start, start + len(batch))
            start += len(batch)
            embedded = model.embedder(batch.inputs, batch.masks)
            for modality in batch.modalities:
                off = mask_off(batch, modality).masks
                logits = model.classify({**embedded, modality: torch.zeros_like(embedded[modality])}, off)
                without = torch.softmax(logits.float() / temperature, dim=-1).cpu()
                chosen = predicted[rows]
                drop = probs[rows, chosen] - without.gather(1, chosen[:, None]).squeeze(1)
                present = batch.masks[modality].cpu()
                out[modality][rows[present]] = drop[present]
    return out


def integrated_gradients(model: nn.Module, data: SplitData, modality: str, key: str, target: torch.Tensor,
                         temperature: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365) of the probability of class
    `target[i]` (at `temperature`) over input `key` of `modality`, for every row of `data` (in memory, one device).

    The path runs in the encoder's normalised input space (after its `input_norm`), from the reference 0 there:
    the per-bin mean of a clip under `utterance_bins`, mid-grey for unnormalised pixels in [-1, 1]. The other
    modalities stay as they are. Midpoint rule over `steps` points. Returns the attributions (shaped as the input)
    and f(x) - f(reference) per row: completeness says the attributions of a row sum to about that.
    """
    model.eval()
    encoder = model.embedder.encoders[modality]
    norm = encoder.input_norm
    raw = dict(data.inputs[modality])
    with torch.no_grad():
        normalised = norm(raw)[key] if norm is not None else raw[key]
    reference = torch.zeros_like(normalised)

    def chosen(x: torch.Tensor) -> torch.Tensor:
        inputs = {**data.inputs, modality: {**raw, key: x}}
        probs = torch.softmax(model(inputs, data.masks).float() / temperature, dim=-1)
        return probs.gather(1, target[:, None]).squeeze(1)

    encoder.input_norm = None  # the path is already normalised
    try:
        total = torch.zeros_like(normalised)
        for k in range(steps):
            point = (reference + (k + 0.5) / steps * (normalised - reference)).requires_grad_(True)
            total += torch.autograd.grad(chosen(point).sum(), point)[0]
        with torch.no_grad():
            gap = chosen(normalised) - chosen(reference)
    finally:
        encoder.input_norm = norm
    return (normalised - reference) * total / steps, gap

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


def probability_drop(probs: torch.Tensor, without: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(N,) the predicted class's probability in `probs` minus its probability in `without` (the same rows with one
    modality's mask off), NaN where that modality is not `present`: the one definition of a contribution."""
    chosen = probs.argmax(dim=1, keepdim=True)
    drop = (probs.gather(1, chosen) - without.gather(1, chosen)).squeeze(1)
    return torch.where(present.cpu(), drop, torch.tensor(float("nan")))


@torch.no_grad()
def with_contributions(model: nn.Module, data: SplitData, temperature: float, batch_size: int,
                       device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(N, C) probabilities of `data` at `temperature` (as `probabilities`), and {modality: (N,) contribution to
    the predicted class's probability}, NaN where the row lacks the modality.

    The encoders run once per row: a modality's embedding does not depend on the others' masks, so each pass with
    one mask off re-runs the fusion and head only (`MultimodalModel.classify`: equal to a whole forward pass with
    that mask off, the masked modality's embedding being zeros as `Embedder` gives an absent one). A model without
    `classify` (an ensemble of such models) runs whole forward passes with each mask off."""
    model.eval()
    split = isinstance(model, MultimodalModel)
    probs, out = [], {m: [] for m in data.modalities}
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        embedded = model.embedder(batch.inputs, batch.masks) if split else None
        logits = model.classify(embedded, batch.masks) if split else model(batch.inputs, batch.masks)
        p = torch.softmax(logits.float() / temperature, dim=-1).cpu()
        for modality in batch.modalities:
            masked = mask_off(batch, modality)
            if split:
                logits = model.classify({**embedded, modality: torch.zeros_like(embedded[modality])}, masked.masks)
            else:
                logits = model(masked.inputs, masked.masks)
            without = torch.softmax(logits.float() / temperature, dim=-1).cpu()
            out[modality].append(probability_drop(p, without, batch.masks[modality]))
        probs.append(p)
    if not probs:
        return torch.empty(0), {m: torch.empty(0) for m in data.modalities}
    return torch.cat(probs), {m: torch.cat(v) for m, v in out.items()}


def integrated_gradients(model: MultimodalModel, data: SplitData, modality: str, key: str, target: torch.Tensor,
                         temperature: float, steps: int, rows_per_pass: int = 256
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365) of the probability of class
    `target[i]` (at `temperature`) over input `key` of `modality`, for every row of `data` (in memory, one device).

    The path runs in the encoder's normalised input space (after its `input_norm`), from the reference 0 there:
    the per-bin mean of a clip under `utterance_bins`, mid-grey for unnormalised pixels in [-1, 1]. The other
    modalities stay as they are (embedded once). Midpoint rule over `steps` points, several points per pass (about
    `rows_per_pass` rows). Returns the attributions (shaped as the input) and f(x) - f(reference) per row:
    completeness says the attributions of a row sum to about that.
    """
    model.eval()
    n = len(data)
    encoder = model.embedder.encoders[modality]
    norm = encoder.input_norm
    raw = dict(data.inputs[modality])
    with torch.no_grad():
        normalised = norm(raw)[key] if norm is not None else raw[key]
        others = model.embedder(data.inputs, data.masks)
    reference = torch.zeros_like(normalised)

    def chosen(x: torch.Tensor) -> torch.Tensor:
        """f at a stack of k points per row ((k * n, ...), point-major): the target class's probability."""
        k = len(x) // n
        inputs = {name: value.repeat(k, *[1] * (value.dim() - 1)) for name, value in raw.items() if name != key}
        masks = {m: v.repeat(k) for m, v in data.masks.items()}
        embedded = {m: v.repeat(k, 1) for m, v in others.items()}
        embedded[modality] = model.embedder.embed(modality, {**inputs, key: x}, masks[modality])
        probs = torch.softmax(model.classify(embedded, masks).float() / temperature, dim=-1)
        return probs.gather(1, target.repeat(k)[:, None]).squeeze(1)

    alphas = (torch.arange(steps, dtype=normalised.dtype, device=normalised.device) + 0.5) / steps
    per_pass = max(1, rows_per_pass // max(n, 1))
    encoder.input_norm = None  # the path is already normalised
    try:
        total = torch.zeros_like(normalised)
        for chunk in alphas.split(per_pass):
            shape = (len(chunk), *[1] * normalised.dim())
            points = (reference + chunk.view(shape) * (normalised - reference)).flatten(0, 1).requires_grad_(True)
            grads = torch.autograd.grad(chosen(points).sum(), points)[0]
            total += grads.view(len(chunk), *normalised.shape).sum(0)
        with torch.no_grad():
            gap = chosen(normalised) - chosen(reference)
    finally:
        encoder.input_norm = norm
    return (normalised - reference) * total / steps, gap

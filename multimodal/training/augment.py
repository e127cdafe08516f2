"""Training-time augmentation: seeded, batched transforms of the cached processor tensors.

Where it runs, and why. Inside the training loop (`multimodal.training.train.fit`), on each training mini-batch of the
tensors `preprocess` cached (image `pixel_values` (B, 3, H, W), audio log-mel `input_values` (B, frames, mel),
text `input_ids` / `attention_mask`), on the training device, just before the forward pass:

- a fresh draw every epoch, where augmented copies made at preprocess would be a few fixed variants that
  multiply disk, preprocess time and the DVC cache;
- the train split only, by construction: validation, `evaluate` and prediction never call it;
- batched tensor operations on the device (the GPU when training runs there); nothing decoded again;
- deterministic: every draw derives from `fit`'s seeded `torch.Generator` (one seed per batch for a generator on
  the device), whose state the training checkpoints save, so a resumed run continues identically. kornia's
  augmentations sample from torch's global RNG, which also drives dropout, hence the few primitives of
  `multimodal.modalities.transforms`
  (`affine_grid` / `grid_sample` for the affine).

The price: only transforms of processor outputs (no waveform speed or pitch change, no re-crop of the original
image); those need the raw item, i.e. preprocess-time copies.

Not augmented: rows lacking a modality (they stay zeros) and modalities read as features cached by `align`
(`align.freeze`, every modality under the `frozen` strategy): no encoder sees their input while training.

Each modality owns its transform (`Modality.augment` in `multimodal/modalities/<m>.py`), composed of the
primitives of `multimodal.modalities.transforms`; its knobs are `tune.fixed.augment.<m>` and `augment_strength` scales
every magnitude (0: off).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch

from multimodal.modalities import get_modality
from multimodal.storage.dataset import SplitData

logger = logging.getLogger(__name__)


# --- the training-loop side ---------------------------------------------------------------------------------------


class Augmenter:
    """Augments the training batches of `fit`: `augment(batch, generator)` -> a new batch (inputs not modified).

    `settings` is `{modality: {knob: value}}` (`tune.fixed.augment`), `strength` scales every magnitude.
    """

    def __init__(self, settings: Mapping[str, Mapping[str, Any]], strength: float, train: SplitData):
        self.strength = float(strength)
        self.transforms = {}
        if self.strength <= 0:
            return
        skipped = []
        for modality, inputs in train.inputs.items():
            knobs = settings.get(modality)
            if not knobs or not inputs or "features" in inputs:
                skipped.append(modality)
                continue
            transform = get_modality(modality).augment
            if transform is None:
                raise ValueError(f"augment.{modality}: the {modality} modality has no augmentation; remove the key")
            try:  # the knobs are the transform's keyword arguments: a typo or a missing one fails now
                inspect.signature(transform).bind(inputs, None, self.strength, **knobs)
            except TypeError as err:
                raise ValueError(f"augment.{modality}: {err}") from None
            self.transforms[modality] = (transform, dict(knobs))
        logger.info("augmentation (strength %g): %s; not augmented: %s (cached features, no settings or absent)",
                    self.strength, sorted(self.transforms) or "none", sorted(skipped) or "none")

    def __call__(self, batch: SplitData, generator: torch.Generator) -> SplitData:
        if not self.transforms:
            return batch  # no draw at all: a run without augmentation consumes the generator as before
        device = batch.labels.device
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        local = torch.Generator(device=device).manual_seed(seed)
        inputs = dict(batch.inputs)
        for modality, (transform, knobs) in self.transforms.items():
            original = batch.inputs[modality]
            changed = transform(original, local, self.strength, **knobs)
            present = batch.masks[modality]
            # Rows lacking the modality keep their zeros (the mask hides them, and encoders may skip them).
            inputs[modality] = {k: torch.where(present.view(-1, *[1] * (v.dim() - 1)), changed[k], v)
                                for k, v in original.items()}
        return SplitData(batch.sample_ids, batch.labels, inputs, batch.masks)

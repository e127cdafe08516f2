"""The members an ensemble is selected from, and their class probabilities on one split.

Members are what a run already has: the best trial's model (`fused`, `<models>/best`), the other top-k trials' best
models (`trial_<n>`, `<models>/trials/<n>`, kept by tune), the unimodal references (`unimodal_<m>`) and the classical
baselines (`baseline_<m>`, `baseline_early_fusion`: their probabilities as the baseline stage wrote them). Each
member's probabilities are NaN on the rows it cannot see.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import torch

from multimodal.evaluation.baseline import EARLY_FUSION, PREFIX, read_probabilities
from multimodal.evaluation.evaluate import FUSED, ModelOnTestSplit, softmax
from multimodal.storage.dataset import SplitData

KINDS = ("trials", "unimodal", "classical")  # params `ensemble.members`; the fused best model is always a member
TRIALS = "trials"  # under base.paths.models: the top-k trials' models (tune.top_k), by trial number
UNIMODAL = "unimodal"


def deep_members(models_dir: Path, kinds: Collection[str]) -> dict[str, Path]:
    """{member name: model folder}: `fused` first, then the trials and unimodal models `kinds` asks for."""
    out = {FUSED: models_dir / "best"}
    if "trials" in kinds and (models_dir / TRIALS).is_dir():
        out.update({f"trial_{d.name}": d for d in sorted((models_dir / TRIALS).iterdir()) if d.is_dir()})
    if "unimodal" in kinds and (models_dir / UNIMODAL).is_dir():
        out.update({f"unimodal_{d.name}": d for d in sorted((models_dir / UNIMODAL).iterdir()) if d.is_dir()})
    return out


def deep_probabilities(members: Mapping[str, Path], data: SplitData, split: str, aligned_dir: Path,
                       batch_size: int, device: torch.device) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Each deep member's (N, C) probabilities on `data` (split `split`, read in the member's form) at its
    validation-fitted temperature (as `predict` gives them), and the modalities it reads. Loaded one at a time:
    memory holds one model."""
    probs, modalities = {}, {}
    for name, folder in members.items():
        reader = ModelOnTestSplit.load(folder, data, aligned_dir, device, split)
        probs[name] = softmax(reader.logits(reader.data, batch_size, device), reader.temperature)
        modalities[name] = list(reader.spec.modalities)
    return probs, modalities


def classical_probabilities(path: Path, sample_ids: list[str], labels: list[str], all_modalities: list[str]
                            ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The baselines' probabilities from the baseline stage's file `path`, and the modalities each reads."""
    probs = read_probabilities(path, sample_ids, labels)
    early = PREFIX + EARLY_FUSION
    return probs, {name: list(all_modalities) if name == early else [name[len(PREFIX):]] for name in probs}

"""A saved ensemble: members by reference and their weights (`ensemble.json`, no copy of any member), and the
weighted average of the members' class probabilities that is its prediction.

A member's probabilities are NaN on the rows it cannot see (a unimodal model on a row lacking its modality). On each
row the average runs over the members that see it, weights renormalised. Selection lives in
`multimodal.evaluation.ensemble`; `predict` runs an ensemble (deep and classical members) as `EnsembleModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multimodal.storage.io import read_json, write_json

ENSEMBLE_JSON = "ensemble.json"
FORMAT = 1


def combine(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """(N, C) weighted average of the members' (N, C) probabilities, per row over the members that see it (not
    NaN there), weights renormalised; NaN rows where no member of positive weight sees the row."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (M, N, C)
    seen = ~np.isnan(stack).any(axis=2)  # (M, N)
    w = np.asarray(weights, dtype=np.float64)[:, None] * seen  # (M, N)
    total = np.einsum("mn,mnc->nc", w, np.nan_to_num(stack, nan=0.0))
    norm = w.sum(axis=0)
    out = np.full(total.shape, np.nan)
    rows = norm > 0
    out[rows] = total[rows] / norm[rows, None]
    return out


@dataclass
class Member:
    """One member by reference: `kind` "model" (a saved deep model) or "classical" (a baseline of the `baseline`
    stage, named `name`), `path` its folder relative to the ensemble's; `modalities` it reads."""

    name: str
    kind: str
    weight: float
    count: int
    modalities: list[str]
    path: str | None = None


@dataclass
class EnsembleSpec:
    """`ensemble.json`: the members and weights, the labels, and the validation figures that chose them."""

    metric: str
    rounds: int
    labels: list[str]
    members: list[Member]
    single_best: str  # the best single full-coverage member on validation
    default: str  # "ensemble" when it beats `single_best` on validation, cross-fitted; else `single_best`
    validation: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def weights(self) -> dict[str, float]:
        return {m.name: m.weight for m in self.members}

    def save(self, out_dir: Path) -> None:
        write_json(Path(out_dir) / ENSEMBLE_JSON, asdict(self), sort_keys=False)

    @classmethod
    def load(cls, folder: Path) -> "EnsembleSpec":
        path = Path(folder) / ENSEMBLE_JSON
        raw = read_json(path)
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: format {raw.get('format')!r}, this code reads {FORMAT}; re-run "
                             "`dvc repro ensemble`")
        try:
            return cls(**{**raw, "members": [Member(**m) for m in raw["members"]]})
        except TypeError as err:
            raise ValueError(f"{path}: {err}; re-run `dvc repro ensemble`") from None


def is_ensemble(folder: Path) -> bool:
    return (Path(folder) / ENSEMBLE_JSON).exists()


def ensemble_probabilities(spec: EnsembleSpec, member_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ensemble's (N, C) probabilities from its members' ({name: (N, C)}, NaN rows unseen)."""
    missing = [m.name for m in spec.members if m.name not in member_probs]
    if missing:
        raise KeyError(f"ensemble members without probabilities: {missing}")
    return combine([member_probs[m.name] for m in spec.members], [m.weight for m in spec.members])


class EnsembleModel(nn.Module):
    """Deep members as one model: `forward` returns the log of the weighted average of the members' probabilities
    (softmax of it gives the average back), each member dropping out of the rows where it sees no modality. A row no
    member sees gets a uniform distribution."""

    def __init__(self, members: Sequence[nn.Module], modalities: Sequence[list[str]], weights: Sequence[float],
                 temperatures: Sequence[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.member_modalities = [list(m) for m in modalities]
        self.weights = [float(w) for w in weights]
        # Each member's own temperature (multimodal.models.temperature): selection averaged calibrated members.
        self.temperatures = [float(t) for t in temperatures] if temperatures else [1.0] * len(self.weights)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        total, norm = None, None
        for model, reads, weight, temperature in zip(self.members, self.member_modalities, self.weights,
                                                      self.temperatures):
            logits = model({m: inputs[m] for m in reads}, {m: masks[m] for m in reads}).float()
            probs = torch.softmax(logits / temperature, dim=-1)
            sees = torch.stack([masks[m] for m in reads]).any(dim=0).float() * weight  # (B,)
            total = probs * sees[:, None] if total is None else total + probs * sees[:, None]
            norm = sees if norm is None else norm + sees
        uniform = torch.full_like(total, 1.0 / total.shape[1])
        average = torch.where(norm[:, None] > 0, total / norm.clamp_min(1e-12)[:, None], uniform)
        return torch.log(average.clamp_min(1e-12))

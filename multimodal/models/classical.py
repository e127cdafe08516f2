"""A saved classical baseline (StandardScaler + logistic regression on a feature recipe per modality) that predicts
from the same processor tensors as the deep models, so `predict` and an ensemble can run it.

Folder (written by the `baseline` stage, `<base.paths.baseline>/models/<name>/`), JSON and safetensors only:

- `classical.json`: the labels, the modalities read (in design order), each one's feature recipe settings
  (`multimodal.models.classical_features`) and width, whether it is early-fused, the chosen `C`, the classes the
  regression knows;
- `weights.safetensors`: the scaler's mean and scale, the regression's coef and intercept, and each recipe's arrays
  (`features.<modality>.<name>`: the TF-IDF vocabulary ids and IDF weights);
- `inputs.json` and `processors/<m>/` as a deep model's (`multimodal.models.bundle`): the processing settings the
  features expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from scipy.special import expit, softmax
from torch import nn

from multimodal.modalities import recorded_modality
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import INPUTS, bundled_processing, read_inputs, save_processors
from multimodal.models.classical_features import Recipe, arrays_of, restore, settings_of
from multimodal.models.model import ModelSpec
from multimodal.storage.dataset import Column
from multimodal.storage.io import read_json, write_json

CLASSICAL_JSON = "classical.json"
WEIGHTS = "weights.safetensors"
FORMAT = 1


def design_matrix(features: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                  early_fusion: bool) -> np.ndarray:
    """The regression's input: one modality's features, or (early fusion) every modality's side by side, zeros
    where it is missing, plus one missing-indicator column each."""
    if not early_fusion:
        (x,) = features.values()
        return x
    blocks = [np.where(masks[m][:, None], x, 0.0) for m, x in features.items()]
    missing = np.stack([~masks[m] for m in features], axis=1).astype(np.float64)
    return np.hstack([*blocks, missing])


@dataclass(eq=False)
class ClassicalModel:
    """A fitted baseline; `predict_proba` as scikit-learn's `make_pipeline(StandardScaler(), LogisticRegression())`
    computes it, from processor tensors."""

    labels: list[str]
    recipes: dict[str, Recipe]  # modality -> its features, in design order
    widths: dict[str, int]  # modality -> its feature count (a batch without the modality still has its columns)
    early_fusion: bool
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (1 | n_classes_known, d)
    intercept: np.ndarray
    classes: np.ndarray  # indices into `labels` the regression knows (a class without train rows gets 0)
    c: float

    @property
    def modalities(self) -> list[str]:
        return list(self.recipes)

    @classmethod
    def from_pipeline(cls, pipeline: Any, labels: list[str], recipes: dict[str, Recipe], widths: dict[str, int],
                      early_fusion: bool, c: float) -> ClassicalModel:
        scaler, regression = pipeline[0], pipeline[-1]
        return cls(list(labels), dict(recipes), dict(widths), early_fusion, scaler.mean_, scaler.scale_,
                   regression.coef_, regression.intercept_, np.asarray(regression.classes_, np.int64), float(c))

    def sees(self, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(masks[m], bool) for m in self.recipes]).any(axis=0)

    def proba_of_design(self, x: np.ndarray) -> np.ndarray:
        """(N, len(labels)) probabilities of design rows."""
        decision = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if len(self.classes) <= 2:  # scikit-learn's binary case: one logit, the logistic function
            p = expit(decision[:, 0])
            known = np.stack([1.0 - p, p], axis=1)
        else:
            known = softmax(decision, axis=1)
        out = np.zeros((len(x), len(self.labels)))
        out[:, self.classes] = known
        return out

    def predict_proba(self, tensors: Mapping[str, Mapping[str, Column]], masks: Mapping[str, Any]) -> np.ndarray:
        """(N, len(labels)) class probabilities, NaN rows where no modality it reads is present."""
        masks = {m: np.asarray(masks[m], dtype=bool) for m in self.recipes}
        n = len(next(iter(masks.values())))
        features = {m: (r.apply(tensors[m]) if masks[m].any() else np.zeros((n, self.widths[m])))
                    for m, r in self.recipes.items()}
        x = design_matrix(features, masks, self.early_fusion)
        seen = self.sees(masks)
        out = np.full((n, len(self.labels)), np.nan)
        if seen.any():
            out[seen] = self.proba_of_design(x[seen])
        return out

    def save(self, folder: Path, processing: Mapping[str, ModalitySpec]) -> None:
        """`classical.json`, `weights.safetensors`, and the processing of the modalities it reads."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"scaler.mean": self.mean, "scaler.scale": self.scale, "regression.coef": self.coef,
                  "regression.intercept": self.intercept, "regression.classes": self.classes}
        for m, recipe in self.recipes.items():
            arrays.update({f"features.{m}.{k}": v for k, v in arrays_of(recipe).items()})
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / WEIGHTS))
        write_json(folder / CLASSICAL_JSON, {
            "format": FORMAT, "kind": "classical", "labels": self.labels, "early_fusion": self.early_fusion,
            "C": self.c, "model": "StandardScaler + LogisticRegression",
            "features": {m: {**settings_of(r), "width": self.widths[m]} for m, r in self.recipes.items()}},
            sort_keys=False)
        read = {m: processing[m] for m in self.recipes}
        write_json(folder / INPUTS, {"processing": {m: s.model_dump() for m, s in read.items()}, "encoders": {}})
        save_processors(folder, read)

    @classmethod
    def load(cls, folder: Path) -> ClassicalModel:
        path = Path(folder) / CLASSICAL_JSON
        meta = read_json(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, this code reads {FORMAT}; re-run "
                             "`dvc repro baseline`")
        arrays = load_file(str(Path(folder) / WEIGHTS))
        recipes, widths = {}, {}
        for m, settings in meta["features"].items():
            prefix = f"features.{m}."
            own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            recipes[m] = restore({k: v for k, v in settings.items() if k != "width"}, own)
            widths[m] = int(settings["width"])
        return cls(meta["labels"], recipes, widths, bool(meta["early_fusion"]), arrays["scaler.mean"],
                   arrays["scaler.scale"], arrays["regression.coef"], arrays["regression.intercept"],
                   arrays["regression.classes"].astype(np.int64), float(meta["C"]))


def is_classical(folder: Path) -> bool:
    return (Path(folder) / CLASSICAL_JSON).exists()


class ClassicalModule(nn.Module):
    """A classical model behind the deep models' call: `forward(inputs, masks)` returns log-probabilities (softmax
    gives them back); a row without any modality it reads gets a uniform distribution."""

    def __init__(self, model: ClassicalModel):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(iter(masks.values())).device
        tensors = {m: {k: v.cpu() for k, v in inputs[m].items()} for m in self.model.recipes}
        probs = self.model.predict_proba(tensors, {m: masks[m].cpu().numpy() for m in self.model.recipes})
        probs[np.isnan(probs).any(axis=1)] = 1.0 / probs.shape[1]
        return torch.log(torch.from_numpy(probs).clamp_min(1e-300)).to(device)


def load_classical_for_raw_inputs(folder: str | Path, device: torch.device | str = "cpu"
                                  ) -> tuple[ClassicalModule, ModelSpec, dict[str, ModalitySpec]]:
    """As `multimodal.models.bundle.load_for_raw_inputs`, for a classical model: the model as a module, a spec
    naming its modalities and labels, and each modality's processing settings (processors from its folder)."""
    folder = Path(folder)
    inputs = read_inputs(folder)
    for modality, entry in inputs["processing"].items():  # a modality of the user's first: its features need it
        recorded_modality(modality, entry.get("module"), str(folder))
    model = ClassicalModel.load(folder)
    processing = {m: bundled_processing(folder, m, ModalitySpec.model_validate(inputs["processing"][m]))
                  for m in model.modalities}
    spec = ModelSpec(model.modalities, {}, model.labels, 0, "classical", 0.0, {}, {})
    return ClassicalModule(model).eval(), spec, processing

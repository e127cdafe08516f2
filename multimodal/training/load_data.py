"""Loads what earlier stages wrote into training-ready splits; shared by tune, evaluate, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.models.strategies import feature_modalities
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import SplitData, load_split
from multimodal.storage.io import read_json
from multimodal.training.align import load_cached_features


def load_labels(params: StageParams) -> list[str]:
    return [str(v) for v in read_json(Path(params.base.paths.validated) / "labels.json")]


def load_splits(params: StageParams, splits: tuple[str, ...] = SPLITS, *,
                strategy: str = "full") -> dict[str, SplitData]:
    """Joined splits in the form a model of fine-tuning `strategy` reads (`initial_model` builds that model).

    The modalities `feature_modalities(strategy, ...)` names (the `align.freeze` ones, every one for `frozen`)
    are replaced by the features `align` cached; the others stay raw processor outputs.
    """
    paths = params.base.paths
    aligned = Path(paths.aligned)
    cached = feature_modalities(strategy, read_json(aligned / "embedder.json"))
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = load_labels(params)
    out = {}
    for split in splits:
        data = load_split(frame, split, labels, Path(paths.preprocessed), params.preprocess.modalities, cached)
        out[split] = load_cached_features(aligned, data, split, cached)
    return out

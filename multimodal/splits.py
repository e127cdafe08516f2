"""Loads what earlier stages wrote into training-ready splits; shared by tune, evaluate, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from multimodal.align import load_cached_features
from multimodal.config import Params
from multimodal.dataset import SplitData, load_split
from multimodal.io import read_json
from multimodal.manifest import SPLITS, read_manifest


def load_labels(params: Params) -> list[str]:
    return [str(v) for v in read_json(Path(params.base.paths.validated) / "labels.json")]


def load_splits(params: Params, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitData]:
    """Joined splits with frozen modalities replaced by the features `align` cached."""
    paths = params.base.paths
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = load_labels(params)
    out = {}
    for split in splits:
        data = load_split(frame, split, labels, Path(paths.preprocessed), params.preprocess.modalities)
        out[split] = load_cached_features(Path(paths.aligned), data, split)
    return out

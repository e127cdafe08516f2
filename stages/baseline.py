"""Stage `baseline`: classical logistic-regression baselines (per modality, early-fused) on the preprocessed shards."""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.evaluation.baseline import (
    PREDICTIONS,
    PROBABILITIES,
    VAL_PROBABILITIES,
    fit_baselines,
    write_predictions,
    write_probabilities,
)
from multimodal.evaluation.params import Baseline
from multimodal.modalities.params import LISTED
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir, write_json
from multimodal.training.load_data import load_labels

logger = logging.getLogger(__name__)

PARAMS = Schema({"base": Base, "baseline": Baseline}) | LISTED


def baseline(params: StageParams) -> dict:
    paths = params.base.paths
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = load_labels(params)
    # Raw processor outputs of every modality (no align features): the baseline is independent of every model.
    splits = {split: load_split(frame, split, labels, Path(paths.preprocessed), params.preprocess.modalities)
              for split in SPLITS}
    metrics, predictions, probabilities = fit_baselines(splits, params.baseline, params.base.seed, len(labels))
    test = splits["test"]
    with atomic_dir(Path(paths.baseline)) as tmp:
        write_predictions(tmp / PREDICTIONS, test.sample_ids, test.labels.numpy(), predictions, labels)
        write_probabilities(tmp / PROBABILITIES, test.sample_ids, probabilities["test"], labels)
        write_probabilities(tmp / VAL_PROBABILITIES, splits["val"].sample_ids, probabilities["val"], labels)
    write_json(Path(paths.metrics) / "baseline.json", metrics)
    return metrics


def main() -> None:
    setup_logging()
    baseline(load_params(stage="baseline", schema=PARAMS))


if __name__ == "__main__":
    main()

"""Stage `baseline`: classical logistic-regression baselines (per modality, early-fused) on the preprocessed shards."""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.evaluation.baseline import (
    MODELS,
    PREDICTIONS,
    PREFIX,
    PROBABILITIES,
    VAL_PROBABILITIES,
    fit_baselines,
    write_predictions,
    write_probabilities,
)
from multimodal.evaluation.params import Baseline
from multimodal.modalities.params import LISTED, MODALITIES
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline_for, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir, write_json
from multimodal.training.load_data import load_labels

logger = logging.getLogger(__name__)

# Each saved model carries the processors of the modalities it reads (`multimodal.models.bundle.save_processors`).
LOADS_CHECKPOINTS = True

PARAMS = Schema({"base": Base, "baseline": Baseline}) | LISTED | MODALITIES


def baseline(params: StageParams) -> dict:
    paths = params.base.paths
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = load_labels(params)
    # Raw processor outputs of every modality (no align features): the baseline is independent of every model.
    splits = {split: load_split(frame, split, labels, Path(paths.preprocessed), params.preprocess.modalities)
              for split in SPLITS}
    fitted = fit_baselines(splits, params.baseline, params.base.seed, labels)
    test = splits["test"]
    with atomic_dir(Path(paths.baseline)) as tmp:
        write_predictions(tmp / PREDICTIONS, test.sample_ids, test.labels.numpy(), fitted.predictions, labels)
        write_probabilities(tmp / PROBABILITIES, test.sample_ids, fitted.probabilities["test"], labels)
        write_probabilities(tmp / VAL_PROBABILITIES, splits["val"].sample_ids, fitted.probabilities["val"], labels)
        # Each model as a folder `predict` runs: `models/baseline_<name>/`, JSON and safetensors.
        for name, model in fitted.models.items():
            model.save(tmp / MODELS / f"{PREFIX}{name}", params.modalities)
    write_json(Path(paths.metrics) / "baseline.json", fitted.metrics)
    return fitted.metrics


def main() -> None:
    setup_logging()
    params = load_params(stage="baseline", schema=PARAMS)
    go_offline_for(params.modalities)  # the processors saved with the models are built from local checkpoints
    baseline(params)


if __name__ == "__main__":
    main()

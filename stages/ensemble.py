"""Stage `ensemble`: greedy ensemble selection (Caruana et al. 2004) on validation rows, over the models the run
already has (the fused best model, the top-k trials' models, the unimodal references, the classical baselines);
writes `<base.paths.ensemble>/ensemble.json` (members by reference, weights, and the validation figures that chose them).

Only the validation split is read: test labels cannot move a weight.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from multimodal.data.manifest import read_manifest
from multimodal.evaluation.baseline import VAL_PROBABILITIES
from multimodal.evaluation.ensemble import choose
from multimodal.evaluation.members import classical_probabilities, deep_members, deep_probabilities
from multimodal.evaluation.params import Ensemble
from multimodal.modalities.params import LISTED
from multimodal.models.ensemble import EnsembleSpec
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline, pick_device, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir
from multimodal.training.load_data import load_labels

logger = logging.getLogger(__name__)

PARAMS = Schema({"base": Base, "ensemble": Ensemble}) | LISTED


def build_ensemble(params: StageParams) -> EnsembleSpec:
    """Select the ensemble on the validation split and write it; returns what was written."""
    paths, cfg = params.base.paths, params.ensemble
    models, out = Path(paths.models), Path(paths.ensemble)
    labels = load_labels(params)
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    val = load_split(frame, "val", labels, Path(paths.preprocessed), params.preprocess.modalities)
    # 1. Every candidate's validation probabilities: deep models in their own input form, baselines from file.
    folders = deep_members(models, cfg.members)
    probs, modalities = deep_probabilities(folders, val, "val", Path(paths.aligned), cfg.batch_size,
                                           pick_device(params.base.device))
    refs = {name: os.path.relpath(folder, out) for name, folder in folders.items()}
    if "classical" in cfg.members:
        more, reads = classical_probabilities(Path(paths.baseline) / VAL_PROBABILITIES, val.sample_ids, labels,
                                              list(params.preprocess.modalities))
        probs.update(more)
        modalities.update(reads)
    # 2. Greedy selection with replacement, then the default: the ensemble only if it beats the single best.
    spec = choose(probs, modalities, refs, val.labels.numpy(), labels, cfg.metric, cfg.rounds)
    with atomic_dir(out) as tmp:
        spec.save(tmp)
    figures = spec.validation
    logger.info("ensemble of %s: validation %s %.4f (accuracy %.4f) vs %.4f (accuracy %.4f) for the single best "
                "%s; the default model: %s", spec.weights, cfg.metric, figures["ensemble"][f"all_rows_{cfg.metric}"],
                figures["ensemble"]["accuracy"], figures["members"][spec.single_best][f"all_rows_{cfg.metric}"],
                figures["members"][spec.single_best]["accuracy"], spec.single_best, spec.default)
    return spec


def main() -> None:
    setup_logging()
    params = load_params(stage="ensemble", schema=PARAMS)
    go_offline()  # members are rebuilt from their saved configs and weights
    build_ensemble(params)


if __name__ == "__main__":
    main()

"""Stage `ensemble`: greedy ensemble selection (Caruana et al. 2004) on validation rows, over the models the run
already has (the fused best model, the top-k trials' models, the unimodal references, the classical baselines);
writes `<base.paths.ensemble>/ensemble.json` (members by reference, weights, and the validation figures that chose
them).

Only the validation split is read: test labels cannot move a weight.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from multimodal.data.manifest import read_manifest
from multimodal.evaluation.baseline import MODELS, VAL_PROBABILITIES
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
    classical = {}
    if "classical" in cfg.members:
        more, reads = classical_probabilities(Path(paths.baseline) / VAL_PROBABILITIES, val.sample_ids, labels,
                                              list(params.preprocess.modalities))
        probs.update(more)
        modalities.update(reads)
        # Each baseline's saved model (`predict` runs it); one whose features cannot be saved has none.
        classical = {name: Path(paths.baseline) / MODELS / name for name in more}
        folders.update({name: folder for name, folder in classical.items() if folder.is_dir()})
    refs = {name: os.path.relpath(folder, out) for name, folder in folders.items()}
    # 2. Greedy selection with replacement on every validation row; the default decided by 2-fold cross-fitting
    #    (groups kept whole): the ensemble only if it beats the single best on rows its weights were not fitted on.
    groups = (frame.set_index("sample_id").loc[val.sample_ids, "group"].fillna("").astype(str).tolist()
              if "group" in frame else None)
    spec = choose(probs, modalities, refs, val.labels.numpy(), labels, cfg.metric, cfg.rounds, classical=classical,
                  groups=groups, seed=params.base.seed)
    with atomic_dir(out) as tmp:
        spec.save(tmp)
    figures, key = spec.validation, f"all_rows_{cfg.metric}"
    crossed = figures["cross_fitted"]
    logger.info("ensemble of %s: validation %s %.4f vs %.4f for the single best %s (in sample); cross-fitted %s; "
                "the default model: %s", spec.weights, cfg.metric, figures["in_sample"]["ensemble"],
                figures["in_sample"]["single_best"], spec.single_best,
                f"{crossed['ensemble'][key]:.4f} vs {crossed['single_best'][key]:.4f}" if crossed
                else "impossible (too few validation rows or groups)", spec.default)
    return spec


def main() -> None:
    setup_logging()
    params = load_params(stage="ensemble", schema=PARAMS)
    go_offline()  # members are rebuilt from their saved configs and weights
    build_ensemble(params)


if __name__ == "__main__":
    main()

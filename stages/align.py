"""Stage `align`: learn the shared space contrastively, report retrieval recall, cache every encoder's features."""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.modalities.params import INPUT_NORM, LISTED, MODALITIES
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline_for, pick_device, seed_everything, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir, write_json
from multimodal.training.align import AlignConfig, align_and_cache, build_encoders
from multimodal.training.load_data import load_labels
from multimodal.training.params import Align

logger = logging.getLogger(__name__)


# Builds every encoder, and the processors saved with the models, from `modalities.<m>`: a local checkpoint folder
# named there is a dep of this stage (multimodal.pipeline.params_inputs; `stage_deps --write` puts it in dvc.yaml).
LOADS_CHECKPOINTS = True

PARAMS = Schema({"base": Base, "align": Align}) | LISTED | MODALITIES | INPUT_NORM


def align(params: StageParams) -> dict[str, float]:
    paths, cfg = params.base.paths, params.align
    align_cfg = AlignConfig.from_params(params)
    device = pick_device(params.base.device)
    seed_everything(params.base.seed)
    modalities = params.preprocess.modalities
    frozen = [m for m in cfg.freeze if m in modalities]
    # 1. Joined splits of raw processor outputs.
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = load_labels(params)
    raw = {s: load_split(frame, s, labels, Path(paths.preprocessed), modalities) for s in SPLITS}
    encoders = build_encoders(params.modalities, modalities, frozen, align_cfg.input_norm)
    with atomic_dir(Path(paths.aligned)) as tmp:
        metrics = align_and_cache(tmp, raw, encoders, frozen, align_cfg, {m: params.modalities[m] for m in modalities},
                                  device)
    write_json(Path(paths.metrics) / "align.json", metrics)
    logger.info("alignment metrics: %s", metrics)
    return metrics


def main() -> None:
    setup_logging()
    params = load_params(stage="align", schema=PARAMS)
    go_offline_for(params.modalities)
    align(params)


if __name__ == "__main__":
    main()

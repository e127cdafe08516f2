"""Stage `align`: learn the shared space contrastively, report retrieval recall, cache every encoder's features."""

from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path

from multimodal.training.align import (AlignConfig, build_encoders, encode_present, encode_trainable, feature_files,
                              frozen_as_features, retrieval_recall, save_embedder, train_alignment,
                              use_cached_features)
from multimodal.models.bundle import save_inputs
from multimodal.modalities.params import INPUT_NORM, LISTED, MODALITIES
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.training.params import Align
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir, write_json
from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.models.model import Embedder
from multimodal.pipeline.runtime import go_offline_for, pick_device, seed_everything, setup_logging
from multimodal.training.load_data import load_labels

logger = logging.getLogger(__name__)


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
        # 2. Frozen encoders run once; their pooled outputs, streamed to the features files, replace the raw inputs
        #    from here on (read back batch by batch).
        widths = {m: encoders[m].out_dim for m in modalities}
        files = feature_files(tmp, {s: raw[s].sample_ids for s in SPLITS}, widths)
        for s, m in itertools.product(SPLITS, frozen):
            encode_present(encoders[m], raw[s], m, cfg.batch_size, device, sink=functools.partial(files[s].write, m))
        data = {s: use_cached_features(raw[s], {m: files[s].column(m) for m in frozen}) for s in SPLITS}
        # 3. Contrastive training of projections (and trainable encoders) on train, no labels.
        embedder = Embedder(frozen_as_features(encoders, frozen), cfg.dim)
        losses = train_alignment(embedder, data["train"], align_cfg, device)
        # 4. Retrieval quality on held-out splits.
        metrics = {"contrastive_loss_last": losses[-1] if losses else None}
        for split in ("val", "test"):
            metrics.update({f"{split}/{k}": v for k, v in retrieval_recall(embedder, data[split], device).items()})
        # 5. Every trainable encoder, with its aligned weights, run once more: the `frozen` strategy reads these.
        encode_trainable(embedder, raw, cfg.batch_size, device, files)
        save_embedder(tmp, embedder.cpu(), align_cfg)
        # Every encoder behind those features (frozen and aligned alike) and the processing that fed it: a model
        # that reads cached features can then still run on new data (`multimodal.models.bundle`, `predict`).
        save_inputs(tmp, encoders, {m: params.modalities[m] for m in modalities})
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

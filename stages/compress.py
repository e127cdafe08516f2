"""Stage `compress`: int8, distilled and pruned variants of the chosen model (`models/best`), each scored on the
same test rows as it (accuracy with interval, paired difference) and measured (size, latency, throughput, memory).

Writes the variants (`<base.paths.compressed>/<variant>/`, safetensors + JSON), `metrics/compress.json` (what is
deterministic: accuracy, differences, sizes) and `plots/compress/front.json` (the table with timings: the
accuracy-vs-latency front `dvc plots show` draws).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

from multimodal.compression.compress import Splits, build_variants, measure
from multimodal.compression.measure import ORIGINAL, meets_target
from multimodal.compression.params import Compress
from multimodal.data.manifest import read_manifest
from multimodal.evaluation.params import Efficiency
from multimodal.modalities.params import LISTED
from multimodal.models.model import ModelSpec
from multimodal.pipeline.params import Base, Paths, Schema, load_params
from multimodal.pipeline.runtime import go_offline, pick_device, seed_everything, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import load_split
from multimodal.storage.io import atomic_dir, read_json, write_json
from multimodal.training.align import load_cached_features

logger = logging.getLogger(__name__)

# Scored and timed as evaluate scores and times (its bootstrap and efficiency settings).
PARAMS = Schema({"base": Base, "compress": Compress, "evaluate.bootstrap": Annotated[int, Field(ge=100)],
                 "evaluate.efficiency": Efficiency}) | LISTED

FRONT = Path("compress") / "front.json"
# Figures of metrics/compress.json: the deterministic columns of the table (timings vary run to run).
DETERMINISTIC = ("kind", "accuracy", "accuracy_ci95_lo", "accuracy_ci95_hi", "n", "minus_original",
                 "minus_original_ci95_lo", "minus_original_ci95_hi", "paired_n", "agreement", "within_1_point",
                 "weights_bytes", "size_ratio", "model_bytes", "parameters", "sparsity", "encoding")


def load_splits(paths: Paths, spec: ModelSpec) -> Splits:
    """Processor outputs of every split; train and val also in the form the model trained in (cached features)."""
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    labels = [str(v) for v in read_json(Path(paths.validated) / "labels.json")]
    train, val, test = (load_split(frame, split, labels, Path(paths.preprocessed), spec.modalities)
                        for split in ("train", "val", "test"))
    tuned = {name: load_cached_features(Path(paths.aligned), data, name, spec.feature_modalities)
             for name, data in (("train", train), ("val", val))}
    return Splits(train, val, test, tuned["train"], tuned["val"])


def compress(params: StageParams) -> list[dict]:
    """The stage: variants of `<models>/best` into `<compressed>/`, the table into metrics and plots."""
    paths, cfg = params.base.paths, params.compress
    best, device = Path(paths.models) / "best", pick_device(params.base.device)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    splits = load_splits(paths, ModelSpec(**read_json(best / "model.json")))
    with atomic_dir(Path(paths.compressed)) as out:
        made = build_variants(best, out, splits, cfg, device)
        rows = measure(best, made, splits, cfg, params.evaluate.bootstrap, params.evaluate.efficiency,
                       params.base.seed, devices, device)
    write_json(Path(paths.metrics) / "compress.json",
               {row["variant"]: {k: row[k] for k in DETERMINISTIC if row.get(k) is not None} for row in rows},
               sort_keys=False)  # a figure that does not apply (the original's difference to itself) is left out
    write_json(Path(paths.plots) / FRONT, rows, sort_keys=False)
    log_table(rows)
    return rows


def log_table(rows: list[dict]) -> None:
    for row in rows:
        versus = "" if row["variant"] == ORIGINAL else (
            f" ({row['minus_original']:+.4f} [{row['minus_original_ci95_lo']:+.4f}, "
            f"{row['minus_original_ci95_hi']:+.4f}] vs the original)")
        logger.info("%-15s accuracy %.4f%s size %.3fx, CPU throughput %.2fx%s", row["variant"], row["accuracy"],
                    versus, row["size_ratio"], row["cpu_throughput_ratio"],
                    "  <- meets the target" if meets_target(row) else "")


def main() -> None:
    setup_logging()
    params = load_params(stage="compress", schema=PARAMS)
    go_offline()  # every model is rebuilt from its saved configs and weights
    seed_everything(params.base.seed)
    compress(params)


if __name__ == "__main__":
    main()

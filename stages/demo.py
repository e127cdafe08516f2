"""Stage `demo`: the embedded demo dataset (manifest.csv + files) into `paths.demo`, built offline.

`ingest` then reads it like any user dataset (`ingest.dataset`), so the demo takes exactly the path user data
takes: the manifest contract, path confinement, the split, validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from multimodal.data.manifest import MANIFEST_NAME, write_manifest
from multimodal.demo.params import DEMO, Demo
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline, setup_logging
from multimodal.storage.io import atomic_dir

logger = logging.getLogger(__name__)


PARAMS = Schema({"base": Base}) | DEMO


def build_demo(cfg: Demo, out_dir: Path, seed: int) -> pd.DataFrame:
    """Write `out_dir/manifest.csv` (no split: `ingest` makes it) and the files it names; returns the manifest."""
    from multimodal.demo.dataset import build_demo_dataset

    with atomic_dir(out_dir) as tmp:
        knobs = cfg.model_dump()
        knobs["audio_snr_db"] = tuple(knobs["audio_snr_db"])
        knobs["modalities"] = tuple(knobs["modalities"])
        knobs["video"] = knobs.pop("clip")
        frame = build_demo_dataset(tmp, seed=seed, **knobs).astype(str)
        write_manifest(frame, tmp / MANIFEST_NAME)
    logger.info("demo dataset: %d samples in %s", len(frame), out_dir)
    return frame


def main() -> None:
    setup_logging()
    go_offline()
    params = load_params(stage="demo", schema=PARAMS)
    build_demo(params.demo, Path(params.base.paths.demo), params.base.seed)


if __name__ == "__main__":
    main()

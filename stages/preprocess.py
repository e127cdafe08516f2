"""Stage `preprocess@<modality>`: HF processor outputs as sharded safetensors per split."""

from __future__ import annotations

import argparse
from pathlib import Path

from multimodal.data.manifest import read_manifest
from multimodal.modalities.params import PLUGINS, ModalitySections
from multimodal.pipeline.params import Schema, load_params
from multimodal.pipeline.ray_cluster import RayAddress, cluster_address
from multimodal.pipeline.runtime import go_offline_for, setup_logging
from multimodal.preprocessing.params import Preprocess
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.storage.io import atomic_dir, write_json

# Builds its modality's processor from `modalities.<m>`: a local checkpoint folder named there is a dep of this
# stage (multimodal.pipeline.params_inputs; `stage_deps --write` puts it in dvc.yaml).
LOADS_CHECKPOINTS = True

PARAMS = Schema({"preprocess": Preprocess, "modalities": ModalitySections, "tune.address": RayAddress}) \
    | PLUGINS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modality", help="which modality to preprocess (image, audio, text)")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(stage=f"preprocess@{args.modality}", schema=PARAMS)
    spec = params.modalities[args.modality]
    go_offline_for({args.modality: spec})
    paths = params.base.paths
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    with atomic_dir(Path(paths.preprocessed) / args.modality) as tmp:
        counts = preprocess_modality(
            frame, Path(paths.raw), tmp, modality=args.modality, spec=spec,
            batch_size=params.preprocess.batch_size, shard_size=params.preprocess.shard_size,
            # The cluster tune joins, if any (RAY_ADDRESS: an environment variable, deliberately no DVC dep: the
            # shards are the same wherever they are written); none: plain Python here, never a local Ray.
            address=cluster_address(params.tune.address), project_dir=Path.cwd(),
        )
        write_json(tmp / "counts.json", counts)


if __name__ == "__main__":
    main()

"""The preprocess stage on an existing Ray cluster (RAY_ADDRESS, a real `ray start --head`) writes byte-identical
shards to the stage run in plain Python (the test run's shared tiny `dvc repro`, tests/integration/built.py), and a
broken file fails it naming the shard and the row."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.workspace import project_env
from tests.integration.built import Built, copy_built
from tests.integration.ray_head import ray_head

# slow (~2.5 min, a Ray head started for it): the shards themselves are checked by the default run's preprocess.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def preprocess(project: Path, modality: str, address: str) -> subprocess.CompletedProcess:
    env = {**project_env(), "RAY_ADDRESS": address}
    return subprocess.run([sys.executable, "-m", "stages.preprocess", modality], cwd=project, env=env,
                          capture_output=True, text=True)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def validated(built: Built, tmp_path_factory) -> Path:
    return copy_built(built, tmp_path_factory.mktemp("raypre") / "project")


def test_shards_written_on_the_cluster_are_byte_identical_to_local_ones(built: Built, validated: Path) -> None:
    project, seconds = validated, {}
    params = yaml.safe_load((project / "params.yaml").read_text())
    modalities, sizes = params["preprocess"]["modalities"], params["preprocess"]
    assert sizes["shard_size"] % sizes["batch_size"], "the tiny params should cut shards mid-batch"
    # The local reference: the shared tiny `dvc repro` ran each preprocess stage in plain Python (no Ray imported).
    local = {}
    for modality in modalities:
        assert f"preprocess {modality} in this process" in built.output
        assert built.dump("stages.preprocess", modality)["ray"] is False
        local[modality] = files(project / "data/preprocessed" / modality)
        assert sum(name.startswith("train-") for name in local[modality]) >= 3  # several shards per split

    with ray_head(project) as (address, node_ids):
        for modality in modalities:
            shutil.rmtree(project / "data/preprocessed" / modality)
            start = time.monotonic()
            done = preprocess(project, modality, address)
            seconds[f"{modality} ray"] = time.monotonic() - start
            assert done.returncode == 0, done.stderr[-3000:]
            tasks = sum(1 for name in local[modality] if name.endswith(".safetensors"))
            assert f"preprocess {modality} on the Ray cluster at {address}: {tasks} tasks" in done.stderr
            assert f"{tasks} shards written by Ray tasks on node(s) {node_ids[0]}" in done.stderr
            assert files(project / "data/preprocessed" / modality) == local[modality], modality

        # A file broken after validation: the task's error, as the local path words it, fails the stage.
        frame = pd.read_csv(project / "data/validated/manifest.csv", keep_default_na=False)
        row = frame[(frame["split"] == "train") & (frame["image"] != "")].iloc[0]
        (project / "data/raw" / row["image"]).write_bytes(b"not an image")
        done = preprocess(project, "image", address)
        assert done.returncode != 0
        assert f"preprocess image: shard train-00000, row sample_id={row['sample_id']} ({row['image']}): " \
               f"UnidentifiedImageError" in done.stderr, done.stderr[-3000:]
    print("preprocess wall time (s):", {k: round(v, 1) for k, v in seconds.items()})

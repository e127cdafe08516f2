"""Tiny params, the test run's Prefect server, and the one reproduced tiny project a test run shares (each test
takes a copy of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.built import Built, build, copy_built
from tests.integration.conftest_prefect import prefect_api  # noqa: F401  (a fixture: the server `built` reports to)

# Small enough for CI on two cores, big enough that every class lands in every split. Each stage's fixed cost
# (imports, Ray's start) is most of a tiny run; these keep the rest small where no assertion depends on the size.
TINY_PARAMS = {
    ("demo", "n_samples"): 120,
    # Several shards per split, the shard size no multiple of the batch size: the built shards are the local
    # reference test_ray_preprocess compares the cluster's with.
    ("preprocess", "batch_size"): 8,
    ("preprocess", "shard_size"): 20,
    ("align", "epochs"): 1,
    ("tune", "num_samples"): 2,
    # One torch thread per trial: with two threads on two cores, one busy core made a step ~9x slower
    # (bench/BENCHMARKS.md), and other jobs share these cores.
    ("tune", "cpus_per_trial"): 1,
    ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
    # One corrupted level per curve, and the efficiency report timed once on small batches: at the default sizes
    # they were half of evaluate's work (MiniLM end to end on 64 rows, 3 repeats, per model).
    ("evaluate", "corruptions"): {"image": {"noise": [0, 0.5], "blur": [0, 1.0], "occlusion": [0, 0.35]},
                                  "audio": {"noise": [0, 0.316]}, "text": {"tokens": [0, 0.5]}},
    ("evaluate", "efficiency"): {"batch_sizes": [1, 4], "warmup": 0, "repeats": 1},
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Built:
    """One tiny run of every stage per test run, the Prefect flow's first run (tests/integration/built.py); read
    it, never write into it."""
    return build(tmp_path_factory.mktemp("built"), TINY_PARAMS)


@pytest.fixture
def reproduced(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built project, right after its run (nothing committed since)."""
    return copy_built(built, tmp_path / "project")

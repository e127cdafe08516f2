"""Tiny params, the test run's Prefect server, and the one reproduced tiny project a test run shares (each test
takes a copy of it); both are shared by the run's pytest-xdist workers too (tests/shared_services.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.built import Built, Building, copy_built, start
from tests.shared_services import shared
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
    # One reference per modality, with the fused best trial's knobs: the candidates' search is unit-tested
    # (tests/unit/tuning/test_references.py) and each extra candidate would add a reference training per modality.
    ("tune", "references"): {"num_samples": 1, "space": {"lr": {"loguniform": [0.0003, 0.005]}}},
    # One corrupted level per curve, and the efficiency report timed once on small batches: at the default sizes
    # they were half of evaluate's work (MiniLM end to end on 64 rows, 3 repeats, per model).
    ("evaluate", "corruptions"): {"image": {"noise": [0, 0.5], "blur": [0, 1.0], "occlusion": [0, 0.35]},
                                  "audio": {"noise": [0, 0.316]}, "text": {"tokens": [0, 0.5]}},
    ("evaluate", "efficiency"): {"batch_sizes": [1, 4], "warmup": 0, "repeats": 1},
    ("evaluate", "explain"): {"rows": 2, "steps": 4},
    # Every kind of variant, each as short as it gets: one epoch, a one-block student (saved and scored with int8
    # weights only: the float student is the same code path), one sparsity. About half the default's work.
    ("compress", "variants"): ["int8", "distilled_int8", "pruned"],
    ("compress", "distill"): {"epochs": 1, "lr": 0.0005, "temperature": 4.0, "alpha": 0.7,
                              "encoders": {"text": {"num_hidden_layers": 1}}},
    ("compress", "prune"): {"sparsities": [0.8], "scope": "global", "epochs": 1, "lr": 0.0003},
}


READS_BUILT = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules that read the shared run go last (the rest, unit tests included, keep their order before them): the
    run starts with the first integration test (`_shared_run_in_background`) and goes on while the others run.

    A stage process is mostly one core of imports and start-up, so on two cores the run and the tests beside it
    share the machine with little loss (README, the test paragraph).
    """
    here = Path(__file__).parent
    reading = {item.module for item in items
               if item.path.is_relative_to(here) and "built" in getattr(item, "fixturenames", ())}
    config.stash[READS_BUILT] = bool(reading)
    items[:] = ([item for item in items if getattr(item, "module", None) not in reading]
                + [item for item in items if getattr(item, "module", None) in reading])


@pytest.fixture(scope="session")
def building(request: pytest.FixtureRequest, prefect_api: str) -> Building:
    """The shared run (tests/integration/built.py), started by the first worker of the test run that asks, in the
    background; the others find it (tests/shared_services.py). It is ended with the test run if still going."""
    return Building.from_record(shared(request.config, "built", lambda home: start(home, TINY_PARAMS).record()))


@pytest.fixture(scope="session", autouse=True)
def _shared_run_in_background(request: pytest.FixtureRequest) -> None:
    """At the first integration test, starts the shared run if any selected test reads it."""
    if request.config.stash.get(READS_BUILT, False):
        request.getfixturevalue("building")


@pytest.fixture(scope="session")
def built(building: Building) -> Built:
    """One tiny run of every stage per test run, the Prefect flow's first run (tests/integration/built.py), once it
    has ended; read it, never write into it."""
    return building.wait()


@pytest.fixture
def reproduced(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built project, right after its run (nothing committed since)."""
    return copy_built(built, tmp_path / "project")

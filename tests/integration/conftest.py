"""Tiny params, and the one reproduced tiny project a test run shares (each test takes a copy of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.built import Built, build, copy_built

# Small enough for CI on two cores, big enough that every class lands in every split.
TINY_PARAMS = {
    ("demo", "n_samples"): 120,
    ("preprocess", "batch_size"): 64,
    ("align", "epochs"): 1,
    ("tune", "num_samples"): 2,
    ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One tiny `dvc repro` of every stage per test run (tests/integration/built.py); read it, never write into it."""
    return build(tmp_path_factory.mktemp("built"), TINY_PARAMS)


@pytest.fixture
def reproduced(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built project, right after its `dvc repro` (nothing committed since)."""
    return copy_built(built, tmp_path / "project")

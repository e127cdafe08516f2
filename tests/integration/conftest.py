"""A fresh git + DVC copy of this repository with tiny params, per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.workspace import copy_project

# Small enough for CI on two cores, big enough that every class lands in every split.
TINY_PARAMS = {
    ("demo", "n_samples"): 120,
    ("preprocess", "batch_size"): 64,
    ("align", "epochs"): 1,
    ("tune", "num_samples"): 2,
    ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project", TINY_PARAMS)

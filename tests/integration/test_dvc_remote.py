"""A DVC remote round trip: a reproduced tiny project is pushed to a local directory remote and committed, a fresh
clone elsewhere pulls it, and finds every stage output as it was with nothing left to run (README, Scale out)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from flows.workspace import run

pytestmark = pytest.mark.integration

# What the README tells a user to commit after `dvc repro`: the lock, the remote's config, and the outputs that
# are not cached (`cache: false` in dvc.yaml), which reach a clone through git, never through the remote.
COMMITTED = ["dvc.lock", ".dvc/config", "metrics", "plots"]


def lock_outs(project: Path) -> list[str]:
    """Every output path of every stage, cached or not, as dvc.lock records it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])})


def file_hashes(project: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of each file under `paths`, keyed by its path relative to `project` (a missing path is missing)."""
    hashes = {}
    for name in paths:
        root = project / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            hashes[path.relative_to(project).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def test_push_clone_pull_gives_every_output_and_nothing_to_run(reproduced: Path, tmp_path: Path) -> None:
    project = reproduced  # a copy of the test run's shared `dvc repro`, nothing committed after it
    outs = lock_outs(project)
    original = file_hashes(project, outs)
    assert {"models/best/model.safetensors", "metrics/headline.json", "data/aligned/embedder.safetensors"} <= set(
        original)

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], project)
    run(["git", "add", *COMMITTED], project)
    run(["git", "commit", "-qm", "run, pushed to the store"], project)
    # The documented commit leaves nothing the pipeline wrote behind: everything else is ignored and cached.
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    run(["dvc", "push"], project)
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not any((clone / name).exists() for name in ("models", "data/aligned", "reports/index.html"))
    run(["dvc", "pull"], clone)  # fails if an output of the lock is missing from the remote

    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
    again = run(["dvc", "repro"], clone)
    assert re.findall(r"Running stage '([^']+)'", again.stdout) == []
    assert "Data and pipelines are up to date" in again.stdout
    # Byte for byte: cached outputs from the remote, the rest (metrics, plots) from git.
    assert file_hashes(clone, outs) == original

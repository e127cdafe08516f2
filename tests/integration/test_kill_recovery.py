"""`kill -9` of `dvc repro` during preprocess, align and tune: the next `dvc repro` finishes with the outputs of an
uninterrupted run, no half-written file becomes an output, and DVC's cache stays intact."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flows.workspace import copy_project, run
from tests.integration.conftest import TINY_PARAMS
from tests.integration.recovery import kill_when, process_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOT_DETERMINISTIC = {"validate"}  # its Data Docs carry run times and random ids (by design, outside data/validated)


def locked_outs(project: Path) -> dict[str, dict[str, str]]:
    """Per stage, each output's hash as dvc.lock records it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {stage: {out["path"]: out["md5"] for out in body.get("outs", [])} for stage, body in lock.items()}


def after_seconds(seconds: float, ready: Callable[[], bool]) -> Callable[[], bool]:
    """`ready` has held for `seconds`: the stage is well into its work."""
    since: list[float] = []

    def check() -> bool:
        if not since and ready():
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] >= seconds

    return check


def cached_outs(project: Path, stages: tuple[str, ...]) -> set[str]:
    """The outputs dvc.lock records for `stages`, named as `dvc data status` names them (folders end in "/")."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"] + ("/" if out["md5"].endswith(".dir") else "") for stage in stages
            for out in lock[stage].get("outs", [])}


def corrupt_cache_files(project: Path) -> list[str]:
    """Cache files whose content does not hash to their name (`.dir` listings included)."""
    bad = []
    for path in (project / ".dvc" / "cache" / "files" / "md5").glob("*/*"):
        name = path.parent.name + path.name.removesuffix(".dir")
        if hashlib.md5(path.read_bytes()).hexdigest() != name:
            bad.append(str(path))
    return bad


def test_dvc_repro_killed_in_preprocess_align_and_tune_recovers(tmp_path: Path) -> None:
    reference = copy_project(tmp_path / "reference", TINY_PARAMS)
    started = time.monotonic()
    run(["dvc", "repro", "tune"], reference)
    uninterrupted = time.monotonic() - started

    project = copy_project(tmp_path / "project", TINY_PARAMS)
    log = tmp_path / "repro.log"
    study = project / ".ray" / "results" / "tune"
    markers = {
        # preprocess@image is at work (one second in: its processor is loaded, shards are being written).
        "preprocess@image": after_seconds(1, lambda: process_in(project, b"stages.preprocess\x00image") is not None),
        "align": after_seconds(5, lambda: process_in(project, b"stages.align") is not None),
        # the first trial has reported an epoch
        "tune": lambda: any(p.stat().st_size for p in study.glob("*/result.json")),
    }
    killed = {}
    for stage, ready in markers.items():
        killed[stage] = kill_when(["dvc", "repro", "tune"], project, ready, log=log)
        # A killed stage is not recorded as done: DVC still has it to run.
        assert json.loads(run(["dvc", "status", "--json", stage], project).stdout or "{}"), stage
    started = time.monotonic()
    last = run(["dvc", "repro", "tune"], project)
    finish = time.monotonic() - started

    # 1. The outputs of an uninterrupted run, hash for hash (tune's metrics: value for value).
    expected, got = locked_outs(reference), locked_outs(project)
    assert set(got) == set(expected)
    for stage in set(expected) - NOT_DETERMINISTIC:
        assert got[stage] == expected[stage], stage
    for name in ("tune.json", "tune_trials.csv", "tune_epochs.csv"):
        assert (project / "metrics" / name).read_text() == (reference / "metrics" / name).read_text(), name
    # 2. Nothing half-written left where an output or a dependency lives.
    leftovers = [p for p in project.glob("data/**/.*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    # 3. DVC agrees, and its cache is intact: every file hashes to its name, and outputs check out from it.
    assert json.loads(run(["dvc", "status", "--json", "--with-deps", "tune"], project).stdout or "{}") == {}
    data_status = json.loads(run(["dvc", "data", "status", "--json"], project).stdout or "{}")
    # The stages `dvc repro tune` does not run: their outputs are the committed run's, not in this project's cache.
    not_run = cached_outs(project, ("baseline", "ensemble", "evaluate", "compress", "report"))
    assert set(data_status.get("not_in_cache", [])) <= not_run, data_status
    assert all(set(paths) <= not_run for paths in data_status.get("uncommitted", {}).values()), data_status
    assert corrupt_cache_files(project) == []
    shutil.rmtree(project / "data" / "aligned")
    shutil.rmtree(project / "data" / "preprocessed" / "image")
    run(["dvc", "checkout", "--with-deps", "tune"], project)
    assert json.loads(run(["dvc", "status", "--json", "--with-deps", "tune"], project).stdout or "{}") == {}
    print(f"uninterrupted `dvc repro tune` {uninterrupted:.0f} s; killed in preprocess after "
          f"{killed['preprocess@image']:.0f} s, in align after {killed['align']:.0f} s, in tune after "
          f"{killed['tune']:.0f} s; "
          f"the last `dvc repro` took {finish:.0f} s; stages it ran: {last.stdout.count('Running stage')}")

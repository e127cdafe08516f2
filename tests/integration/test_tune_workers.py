"""Trials that span workers (`tune.workers_per_trial: 2`): the tune stage on a local Ray, each trial a Ray Train run
of two gloo workers, against the same study on one worker per trial."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import project_env, run, set_params
from tests.integration.built import Built, copy_built
from tests.integration.recovery import process_in, tune_killing_a_worker

# Slow (opt-in: `-m slow`): data-parallel trials are an opt-in path; tests/unit/training covers the gradient
# and metric reductions without Ray.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Frozen encoders (align's cached features: no BatchNorm, whose batch statistics are per worker) and no dropout
# (each worker draws its own masks): what is left to differ is float summation order.
SPACE = {"lr": {"choice": [0.001, 0.003]}, "dropout": {"choice": [0.0]}, "fusion": {"choice": ["concat", "gated"]}}
LOSS_TOLERANCE = 1e-4  # |val_loss difference| per trial and epoch, 2 workers vs 1
ACCURACY_TOLERANCE = 1e-6  # |val_accuracy difference|: the same predictions (a tie flipped by rounding would be 1/n)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def study(project: Path) -> Path:
    return project / ".ray" / "results" / "tune"


def reports(project: Path) -> dict[str, list[dict]]:
    """Per trial number, what its result.json recorded (one line per reported epoch)."""
    found = {}
    for path in sorted(study(project).glob("*/result.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        found[lines[0]["trial_id"].rsplit("_", 1)[-1]] = lines
    return found


def tune_stage(project: Path, workers: int, **tune) -> tuple[dict[str, str], dict[str, list[dict]], float]:
    """Run the tune stage afresh; its tables and metrics, Ray's per-trial reports, and the seconds it took."""
    set_params(project, {("tune", key): value for key, value in
                         {"space": SPACE, "num_samples": 2, "max_failures": 0, "address": None, "cpus_per_trial": 1,
                          "workers_per_trial": workers, "scheduler": "fifo", **tune}.items()})
    shutil.rmtree(project / ".ray" / "results", ignore_errors=True)
    started = time.monotonic()
    run([sys.executable, "-m", "stages.tune"], project)
    seconds = time.monotonic() - started
    tables = {name: (project / "metrics" / name).read_text() for name in ("tune_trials.csv", "tune_epochs.csv")}
    return tables, reports(project), seconds


@pytest.fixture(scope="module")
def aligned(built: Built, tmp_path_factory) -> Path:
    project = copy_built(built, tmp_path_factory.mktemp("tune-workers") / "project")
    set_params(project, {("tune", "fixed", "strategy"): "frozen"})
    run(["dvc", "repro", "align"], project)  # runs again only if align reads the strategy
    return project


def test_trials_on_two_workers_match_one_worker(aligned: Path) -> None:
    one, one_reports, one_seconds = tune_stage(aligned, workers=1)
    two, two_reports, two_seconds = tune_stage(aligned, workers=2)
    # Every epoch of every trial was reported by two Train workers (rank 0 relays them; one-process trials do not
    # report a worker count), and reached Tune with its checkpoint.
    assert sorted(two_reports) == ["00000", "00001"]
    assert all(r["workers"] == 2 and r["checkpoint_dir_name"] for rs in two_reports.values() for r in rs)
    assert all("workers" not in r for rs in one_reports.values() for r in rs)
    # The same trials, epochs and chosen trial; the metrics within the stated tolerances.
    epochs = {n: [read_rows(t[n]) for t in (one, two)] for n in ("tune_epochs.csv", "tune_trials.csv")}
    for mine, theirs in zip(*epochs["tune_epochs.csv"], strict=True):
        assert (mine["trial"], mine["epoch"]) == (theirs["trial"], theirs["epoch"])
        assert abs(float(mine["val_accuracy"]) - float(theirs["val_accuracy"])) <= ACCURACY_TOLERANCE
        assert abs(float(mine["val_loss"]) - float(theirs["val_loss"])) <= LOSS_TOLERANCE
    worst = max(abs(float(a["val_loss"]) - float(b["val_loss"])) for a, b in zip(*epochs["tune_epochs.csv"]))
    assert [t["status"] for t in epochs["tune_trials.csv"][1]] == ["ok", "ok"]
    summary = json.loads((aligned / "metrics" / "tune.json").read_text())
    assert (aligned / "models" / "best" / "model.safetensors").exists() and summary["trials"] == 2
    per_trial = [sum(rs[-1]["time_total_s"] for rs in r.values()) / len(r) for r in (one_reports, two_reports)]
    print(f"2 trials x 2 epochs: the stage took {one_seconds:.0f} s with 1 worker per trial, {two_seconds:.0f} s "
          f"with 2; a trial {per_trial[0]:.1f} s vs {per_trial[1]:.1f} s; max |val_loss difference| {worst:.1e}")


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def test_a_trial_whose_train_worker_dies_resumes_from_its_checkpoint(aligned: Path) -> None:
    tune = {"num_samples": 1, "max_failures": 1, "asha": {"max_epochs": 4, "grace_period": 1, "reduction_factor": 2}}
    expected, expected_reports, _ = tune_stage(aligned, workers=2, **tune)
    assert [r["epoch"] for r in expected_reports["00000"]] == [1, 2, 3, 4]

    shutil.rmtree(study(aligned).parent, ignore_errors=True)
    log = aligned / "tune.log"
    # Tune's second checkpoint: the first is complete and reported by then. Kill one of the trial's workers.
    killed = tune_killing_a_worker(aligned, study(aligned), "run_trial_on_workers_*",
                                   lambda: process_in(aligned, b"ray::RayTrainWorker"), log)
    assert killed is not None, "no Ray Train worker was found"
    text = log.read_text()
    assert "Restored on" in text and "trial resumes from" in text  # Tune retried the trial from its checkpoint
    epochs = [r["epoch"] for r in reports(aligned)["00000"]]
    # Restarted from scratch, the trial would report epoch 1 again; it went on from Tune's checkpoint instead.
    assert epochs.count(1) <= 1 and epochs[-1] == 4, epochs
    tables = {name: (aligned / "metrics" / name).read_text() for name in expected}
    assert tables == expected
    print(f"Train worker {killed} killed after the trial's second checkpoint; Ray's result file held epochs {epochs}")


def test_asha_stops_multi_worker_trials_and_the_next_ones_start(aligned: Path) -> None:
    # The two lrs end epoch 1 with clearly different val_loss (0.01 worse); with base.seed 42 the trials draw
    # [1e-6, 0.01, 0.01, 1e-6], so ASHA stops trials 1 and 2 at its first rung and trial 3 starts after them. A
    # stopped trial whose Train workers kept their placement group (both CPUs of this machine) would block every
    # later trial: the timeout turns that hang into a failure.
    space = {**SPACE, "lr": {"choice": [1e-6, 0.01]}, "fusion": {"choice": ["concat"]}}
    set_params(aligned, {("tune", key): value for key, value in
                         {"space": space, "num_samples": 4, "max_failures": 0, "address": None, "cpus_per_trial": 1,
                          "workers_per_trial": 2, "scheduler": "asha", "metric": "val_loss", "mode": "min",
                          "asha": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2}}.items()})
    shutil.rmtree(study(aligned).parent, ignore_errors=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stages.tune"], cwd=aligned, env=project_env(), capture_output=True,
                          text=True, timeout=900)
    seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    trials = read_rows((aligned / "metrics" / "tune_trials.csv").read_text())
    epochs = {r: [e["epoch"] for e in rs] for r, rs in reports(aligned).items()}
    assert sorted(epochs) == ["00000", "00001", "00002", "00003"] and all(t["status"] == "ok" for t in trials)
    stopped = [r for r, e in epochs.items() if e[-1] < 3]
    assert stopped, f"ASHA stopped no trial: {epochs}"
    # After a stopped trial, a later trial still started and reported (the stopped one released its workers).
    assert any(later > min(stopped) for later in epochs), epochs
    assert "WorkerGroupStartupTimeoutError" not in log
    print(f"ASHA over 4 two-worker trials: epochs per trial {epochs}, stopped {stopped}; the stage took "
          f"{seconds:.0f} s")

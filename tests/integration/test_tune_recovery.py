"""The tune stage survives being killed: a study resumes without training finished trials again, and a trial whose
worker dies is retried from its latest checkpoint; both end exactly as an uninterrupted study does. A run that failed
can be retried: trials that failed for a passing reason pass on the next run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import run, set_params
from tests.integration.built import Built, copy_built
from tests.integration.recovery import kill_when, lines, trial_worker_in, tune_killing_a_worker, tune_on_a_full_disk

# slow (~2 min each, a tiny tune run twice): resume and retry of a study; unit tests cover the decisions
# (tests/unit/tuning/test_resume.py), these the real Ray behaviour behind them.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUTS = ("metrics/tune_trials.csv", "metrics/tune_epochs.csv", "metrics/tune.json")


@pytest.fixture(scope="module")
def aligned(built: Built, tmp_path_factory) -> Path:
    return copy_built(built, tmp_path_factory.mktemp("tune-recovery") / "project")


def tune_stage(project: Path) -> float:
    started = time.monotonic()
    run([sys.executable, "-m", "stages.tune"], project)
    return time.monotonic() - started


def outputs(project: Path) -> dict[str, str]:
    return {name: (project / name).read_text() for name in OUTPUTS}


def study(project: Path) -> Path:
    return project / ".ray" / "results" / "tune"


def reports(project: Path) -> dict[str, list[int]]:
    """Per trial number, the epochs its result.json recorded, in order (one line per trained epoch)."""
    found = {}
    for path in sorted(study(project).glob("*/result.json")):
        if not path.read_text().strip():  # a trial that failed before its first report
            continue
        number = json.loads(path.read_text().splitlines()[0])["trial_id"].rsplit("_", 1)[-1]
        found[number] = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]
    return found


def fresh(project: Path) -> None:
    shutil.rmtree(project / ".ray" / "results", ignore_errors=True)


def statuses(project: Path) -> dict[str, str]:
    with (project / "metrics/tune_trials.csv").open() as handle:
        return {row["trial"]: row["status"] for row in csv.DictReader(handle)}


def failing_trials(project: Path, trials: int) -> None:
    """`trials` trials of 2 epochs, one at a time, none retried (a trial that fails, fails for good)."""
    set_params(project, {("tune", "num_samples"): trials, ("tune", "cpus_per_trial"): 1,
                         ("tune", "scheduler"): "fifo", ("tune", "max_concurrent_trials"): 1,
                         ("tune", "max_failures"): 0,
                         ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2}})
    fresh(project)


def tune_again(project: Path) -> subprocess.CompletedProcess:
    done = run([sys.executable, "-m", "stages.tune"], project, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_an_interrupted_study_resumes_without_training_finished_trials_again(aligned: Path) -> None:
    set_params(aligned, {("tune", "num_samples"): 3, ("tune", "cpus_per_trial"): 1, ("tune", "scheduler"): "asha",
                         ("tune", "max_concurrent_trials"): 2,
                         ("tune", "asha"): {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2}})
    fresh(aligned)
    whole = tune_stage(aligned)
    expected, expected_reports = outputs(aligned), reports(aligned)
    # ASHA stops at least one trial early: its decisions must survive the restore too.
    assert len(expected_reports) == 3 and min(map(len, expected_reports.values())) < 3, expected_reports

    fresh(aligned)
    third = lambda: lines(next(iter(study(aligned).glob("*_00002_*/result.json")), Path("-"))) >= 1  # noqa: E731
    killed_after = kill_when([sys.executable, "-m", "stages.tune"], aligned, third)
    before = reports(aligned)
    # Two trials run at a time: the third started when one of the first two had ended.
    finished = [t for t in ("00000", "00001") if before.get(t) == expected_reports[t]]
    assert finished, (before, expected_reports)
    resumed = tune_stage(aligned)

    assert outputs(aligned) == expected
    after = reports(aligned)
    assert all(after[t] == before[t] for t in finished)  # not trained again
    assert after == expected_reports  # every epoch trained once: unfinished trials continued from their checkpoint
    epochs_before = sum(map(len, before.values()))
    print(f"study of 3 trials, 2 at a time: {whole:.0f} s uninterrupted; killed after {killed_after:.0f} s with "
          f"{len(finished)} trial(s) finished and {epochs_before} of {sum(map(len, expected_reports.values()))} "
          f"epochs reported; the re-run took {resumed:.0f} s and trained only the missing epochs")


def test_a_trial_whose_worker_dies_after_a_checkpoint_resumes_from_it(aligned: Path) -> None:
    set_params(aligned, {("tune", "num_samples"): 1, ("tune", "cpus_per_trial"): 1, ("tune", "scheduler"): "fifo",
                         ("tune", "max_failures"): 1, ("tune", "asha"): {"max_epochs": 4, "grace_period": 1,
                                                                        "reduction_factor": 2}})
    fresh(aligned)
    tune_stage(aligned)
    expected, expected_reports = outputs(aligned), reports(aligned)
    assert expected_reports == {"00000": [1, 2, 3, 4]}

    fresh(aligned)
    log = aligned / "tune.log"
    killed = tune_killing_a_worker(aligned, study(aligned), "*_00000_*", lambda: trial_worker_in(aligned), log)
    assert killed is not None, "the trial's worker was never found"

    text = log.read_text()
    assert "ActorDiedError" in text and "Restored on" in text and "from checkpoint" in text
    # Restarted from scratch, the trial would report epoch 1 again; it went on from its checkpoint instead.
    epochs = reports(aligned)["00000"]
    assert epochs.count(1) <= 1 and epochs[-1] == 4, epochs
    assert outputs(aligned) == expected  # every epoch in the tables, and the same model chosen
    print(f"trial killed (worker {killed}) after its first checkpoint; Ray's result file then held epochs {epochs}")


def test_trials_that_failed_for_a_passing_reason_pass_on_the_next_run(aligned: Path, tmp_path: Path) -> None:
    """Every trial failed, here for a passing reason (a full disk at its first checkpoint, no retries left): the run
    fails and names the command that starts over; that command, with nothing changed, starts a fresh study and
    succeeds. (Before, the next run restored the study with its errored trial as it was, and failed again at every
    run.)"""
    failing_trials(aligned, 1)
    marker, log = tmp_path / "disk-full", tmp_path / "tune.log"
    marker.touch()
    assert tune_on_a_full_disk(aligned, marker, log) == 1
    text = log.read_text()
    assert "no trial succeeded" in text and "No space left on device (injected" in text, text[-3000:]
    assert "This study is closed: the next run starts a fresh one." in text and "then run: dvc repro tune" in text

    marker.unlink()  # the disk has room again
    again = tune_again(aligned)
    assert "starting a fresh study: the last run of the one in" in again.stderr
    assert "(no trial succeeded of 1)" in again.stderr
    assert statuses(aligned) == {"00000": "ok"} and reports(aligned) == {"00000": [1, 2]}


def test_a_study_cut_off_after_its_search_tries_its_errored_trial_again(aligned: Path, tmp_path: Path) -> None:
    """Trial 0 fails for a passing reason (a full disk at its first checkpoint, no retries left), trial 1 succeeds,
    and the stage is killed right after its search. The next run continues that study: trial 0 is tried again and
    passes, trial 1 is not trained again. (Before, the errored trial stayed errored, with no config of its own:
    building the table crashed with "'NoneType' object has no attribute 'items'".)"""
    failing_trials(aligned, 2)
    marker, log = tmp_path / "disk-full", tmp_path / "tune.log"
    marker.touch()

    def room_once_trial_0_ended() -> None:  # trials run one at a time: trial 1 starts once trial 0 has failed
        if marker.exists() and any(study(aligned).glob("*_00001_*")):
            marker.unlink()

    assert tune_on_a_full_disk(aligned, marker, log, meanwhile=room_once_trial_0_ended,
                               cut_off=lambda: "search: 2 trials" in log.read_text()) is None
    text = log.read_text()
    assert "No space left on device (injected" in text, text[-3000:]
    before = reports(aligned)
    assert before == {"00001": [1, 2]}, before  # trial 0 failed before its first report

    again = tune_again(aligned)
    assert "resuming the study" in again.stderr
    assert reports(aligned) == {"00000": [1, 2], "00001": [1, 2]}  # trial 1 not trained again
    assert statuses(aligned) == {"00000": "ok", "00001": "ok"}
    # A restored study takes no new callback: its references train after the search (early_references.py).
    assert "references start during the search" not in again.stderr and "unimodal audio: " in again.stderr

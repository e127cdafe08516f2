"""Every use of Ray's private parts, in one module, checked against one Ray version.

Ray's public API does not offer what the tune stage needs here: the thread of a Tune function trial (to wait for a
trial on Ray Train workers to release them), mixins for a function trainable, ASHA's rungs and settings (to replay a
resumed study's decisions) and the files a study leaves on disk (results, trial ids, trial configs). Each function
below names what it reaches into. They were read against Ray `CHECKED_VERSION` (its source, and the tests that drive
them); `require_checked_ray` refuses another series at the start of the tune stage, before anything runs, instead of
failing mid-study. pyproject.toml pins the same series. To move to another Ray: read each function against its
source, run tests/integration/test_tune*.py, then update `CHECKED_VERSION`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CHECKED_VERSION = "2.60.0"  # the Ray release this module was read against
CHECKED_SERIES = "2.60"     # patch releases of it are accepted (as pyproject.toml's `ray[tune]>=2.60,<2.61`)


class UncheckedRay(RuntimeError):
    """The installed Ray is not the series this module was checked against."""


def check_ray_version(installed: str) -> None:
    """Raise `UncheckedRay` unless `installed` (e.g. "2.60.0") is of `CHECKED_SERIES`."""
    if installed.split(".")[:2] != CHECKED_SERIES.split("."):
        raise UncheckedRay(
            f"tune: Ray {installed} is installed, but the tune stage relies on Ray internals checked against Ray "
            f"{CHECKED_VERSION} (any {CHECKED_SERIES}.x): multimodal/tuning/ray_private.py. Install the tested pins "
            f"(`source scripts/setup.sh`, or `pip install -r requirements.lock`), or check that module against Ray "
            f"{installed} and update its CHECKED_VERSION.")


def require_checked_ray() -> None:
    """`check_ray_version` of the installed Ray, read from its package metadata (Ray is not imported: joining a
    cluster sets environment variables Ray reads once, at import)."""
    try:
        installed = version("ray")
    except PackageNotFoundError as error:
        raise UncheckedRay("tune: Ray is not installed; `source scripts/setup.sh` installs the tested pins") from error
    check_ray_version(installed)


# --- Tune function trainables -------------------------------------------------------------------------------------

def trial_session() -> Any:
    """This Tune function trial's session (`ray.train._internal.session.get_session`); take it before the
    trainable's `cleanup`, which clears it."""
    from ray.train._internal.session import get_session

    return get_session()


def training_thread(session: Any) -> threading.Thread | None:
    """The thread running the trial's function (`session.training_thread`), None before it started."""
    return session.training_thread if session is not None and session.training_started else None


def with_mixins(trainable: Any, *mixins: type) -> Any:
    """`trainable` (a function for Tune) whose Trainable class inherits from `mixins` first (`__mixins__`, read by
    `ray.tune.trainable.function_trainable.wrap_function` and kept by `tune.with_parameters`)."""
    trainable.__mixins__ = mixins
    return trainable


# --- ASHA's state ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AshaSettings:
    """What an `ASHAScheduler` was built with (its private attributes): reports are timed by `time_attr`, scored by
    `metric` times `metric_op` (+1 max, -1 min); a trial at `max_t` is stopped when `stop_last_trials`."""

    time_attr: str
    metric: str | None
    metric_op: float | None
    max_t: int
    stop_last_trials: bool
    brackets: int


def asha_settings(asha: Any) -> AshaSettings:
    return AshaSettings(asha._time_attr, asha._metric, asha._metric_op, asha._max_t, asha._stop_last_trials,
                        len(asha._brackets))


def asha_rungs(asha: Any) -> list[int]:
    """The milestones of ASHA's (first) bracket, ascending."""
    return sorted(int(milestone) for milestone, _ in asha._brackets[0]._rungs)


class _TrialId:
    """What `_Bracket.on_result` reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def bracket_decision(asha: Any, trial_id: str, time: Any, value: float) -> str:
    """Record one report in ASHA's (only) bracket as `on_trial_result` would, without a trial object; returns its
    decision (CONTINUE or STOP). `value` is the metric times `metric_op`."""
    return asha._brackets[0].on_result(_TrialId(trial_id), time, value)


# --- A study on disk ------------------------------------------------------------------------------------------------

RESULT_FILES = ("result.json", "progress.csv")  # what Ray appends to, per trial folder, once per report
TRIAL_CONFIG = "params.json"                    # a trial folder's config, as JSON
_TRIAL_FOLDER = re.compile(r"_[0-9a-f]{5}_(\d{5})_")  # `<trainable>_<study id>_<number>_<params>_<date>`


def result_files(study: Path) -> list[Path]:
    """Every file of `study` Ray appends reports to."""
    return [path for name in RESULT_FILES for path in study.glob(f"*/{name}")]


def recorded_reports(study: Path) -> list[dict[str, Any]]:
    """Every report the study's trials recorded (`<trial>/result.json`, one JSON per line), in no order."""
    reports = []
    for path in study.glob(f"*/{RESULT_FILES[0]}"):
        reports += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return reports


def has_trial_states(study: Path) -> bool:
    """Whether Ray has saved the study's trial states yet (`experiment_state-*.json`, some seconds into a study)."""
    return any(study.glob("experiment_state-*.json"))


def number_of_trial_id(trial_id: str) -> str:
    """The trial's sequence number ("00004"); Ray's trial id adds a random per-study prefix ("f1e41_00004")."""
    return trial_id.rsplit("_", 1)[-1]


def number_of_trial_folder(folder: str) -> str | None:
    """The sequence number in a trial folder's name, None if it is not one."""
    match = _TRIAL_FOLDER.search(folder)
    return match.group(1) if match else None


def config_on_disk(trial_folder: Path) -> dict[str, Any] | None:
    """The config a trial folder records, None without one. A result restored from an errored trial that never
    reported has no config of its own (its `metrics` are empty), but its folder keeps it."""
    path = trial_folder / TRIAL_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None

"""The references start during the search only once its best trial cannot change (early_references.py)."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from multimodal.tuning.early_references import StartReferencesEarly, TrialSoFar, certain_best
from multimodal.tuning.references import ReferencePlan


def so_far(*rows: tuple[str, float | None, str]) -> list[TrialSoFar]:
    return [TrialSoFar(number, best, state) for number, best, state in rows]


def test_the_one_trial_left_is_certain_when_ahead_of_every_ended_trial() -> None:
    trials = so_far(("00000", 0.80, "running"), ("00001", 0.50, "ended"), ("00002", 0.79, "ended"))
    assert certain_best(trials, 3, "max") == "00000"


@pytest.mark.parametrize("rows, num_samples", [
    # a later trial not created yet may still beat it
    ([("00000", 0.80, "running"), ("00001", 0.50, "ended")], 3),
    # two still training: either may end up best
    ([("00000", 0.80, "running"), ("00001", 0.50, "running"), ("00002", 0.40, "ended")], 3),
    # an ended trial is ahead: the one still training may or may not pass it
    ([("00000", 0.80, "running"), ("00001", 0.85, "ended")], 2),
    # it has not reported yet
    ([("00000", None, "running"), ("00001", 0.50, "ended")], 2),
    # nothing left running: the search is over, the stage takes it from here
    ([("00000", 0.80, "ended"), ("00001", 0.50, "ended")], 2),
])
def test_open_while_anything_could_still_change(rows, num_samples: int) -> None:
    assert certain_best(so_far(*rows), num_samples, "max") is None


def test_ties_go_to_the_lower_trial_number_as_the_stage_picks() -> None:
    assert certain_best(so_far(("00000", 0.5, "ended"), ("00001", 0.5, "running")), 2, "max") is None
    assert certain_best(so_far(("00000", 0.5, "running"), ("00001", 0.5, "ended")), 2, "max") == "00000"


def test_failed_trials_are_never_the_best_and_mode_min_compares_the_other_way() -> None:
    rows = (("00000", 0.9, "failed"), ("00001", 0.3, "running"), ("00002", 0.4, "ended"))
    assert certain_best(so_far(*rows), 3, "max") is None          # 00002 is ahead
    assert certain_best(so_far(*rows), 3, "min") == "00001"       # a loss: lower is better, the failed one ignored


class RecordingPlan(ReferencePlan):
    """Records what it was asked to start instead of submitting Ray tasks."""

    def __init__(self) -> None:
        super().__init__(params=None, modalities=["image"], project_dir=Path("."))
        self.calls: list[tuple[str, dict]] = []

    def start(self, trial: str, config: dict) -> None:
        self.calls.append((trial, config))
        self.trial = trial


def trial(number: str, status: str = "RUNNING", best: float | None = None):
    return SimpleNamespace(trial_id=f"ab12c_{number}", status=status, config={"lr": float(number) + 1},
                           metric_analysis={"val_accuracy": {"max": best, "min": best}} if best is not None else {})


def test_the_callback_starts_the_plan_once_from_what_ray_tells_it() -> None:
    plan = RecordingPlan()
    hook = StartReferencesEarly(plan, "val_accuracy", "max", num_samples=2)
    first, second = trial("00000"), trial("00001")
    hook.on_trial_result(1, [first, second], first, {"val_accuracy": 0.7})
    hook.on_trial_result(1, [first, second], second, {"val_accuracy": 0.6})
    assert plan.calls == []                                     # both still training
    hook.on_trial_complete(1, [first, second], second)          # second stopped (Ray has not marked it yet)
    assert plan.calls == [("00000", {"lr": 1.0})]
    second.status = "TERMINATED"
    hook.on_trial_result(2, [first, second], first, {"val_accuracy": 0.8})
    assert len(plan.calls) == 1                                 # once


def test_the_callback_reads_a_restored_trials_recorded_best_and_waits_for_a_leader() -> None:
    plan = RecordingPlan()
    hook = StartReferencesEarly(plan, "val_accuracy", "max", num_samples=2)
    ended, running = trial("00000", "TERMINATED", best=0.9), trial("00001")
    hook.on_trial_result(3, [ended, running], running, {"val_accuracy": 0.8})
    assert plan.calls == []                                     # 00000 ended ahead of it
    hook.on_trial_error(3, [ended, running], running)
    assert plan.calls == []                                     # nothing left running


def test_a_copy_ray_unpickles_does_nothing() -> None:
    plan = RecordingPlan()
    copy = pickle.loads(pickle.dumps(StartReferencesEarly(plan, "val_accuracy", "max", num_samples=1)))
    only = trial("00000")
    copy.on_trial_result(1, [only], only, {"val_accuracy": 0.5})
    assert copy.plan is None and plan.calls == []

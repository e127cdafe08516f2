"""Unimodal references started during the search, as soon as its best trial is certain.

The references train with the best trial's knobs (`multimodal.tuning.references`), so they used to wait for the
whole search. Under ASHA a search usually ends with one trial training alone (the others stopped at a rung) while
the cores the others had sit idle. A trial's best value only improves as it trains on, so once every other trial has
ended (stopped, finished, or failed for good) below the one still training, that one is the best trial whatever it
does next, and its references can start on the idle cores.

Nothing in a reference depends on when it starts (the same task, inputs and threads), so the models are the ones the
stage would train after the search. The stage hands the final best trial's knobs to `ReferencePlan.collect`: if they
differ from those the references started with (the trial chosen early failed later for good), the early tasks are
cancelled and the references trained again.

A resumed study (`Tuner.restore`) cannot take a new callback: its references start after the search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from multimodal.tuning.ray_private import number_of_trial_id
from multimodal.tuning.references import ReferencePlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSoFar:
    """One trial as the search stands: its number, its best value of the metric so far (None before it reported
    one) and whether it is still `running` (or pending, or about to be retried), `ended`, or `failed` for good."""

    number: str
    best: float | None
    state: str


def certain_best(trials: list[TrialSoFar], num_samples: int, mode: str) -> str | None:
    """The number of the trial that is the study's best whatever happens next, or None while that is open.

    Certain when every trial of the study exists, exactly one is still running, it has reported, and it is ahead of
    every ended trial that has a value (failed ones are never chosen): as the stage picks the best, the better value
    wins and a tie goes to the lower trial number. Its best can only get better.
    """
    if len(trials) < num_samples:
        return None
    running = [t for t in trials if t.state == "running"]
    if len(running) != 1 or running[0].best is None:
        return None
    lead = running[0]
    rivals = [t for t in trials if t is not lead and t.state == "ended" and t.best is not None]
    return lead.number if all(_ahead(lead, rival, mode) for rival in rivals) else None


def _ahead(a: TrialSoFar, b: TrialSoFar, mode: str) -> bool:
    if a.best == b.best:
        return a.number < b.number
    return a.best > b.best if mode == "max" else a.best < b.best


class StartReferencesEarly(Callback):
    """A Tune callback, in the driver: after each report, end or failure, starts `plan` once the best trial is
    certain (`certain_best`). A copy Ray unpickles (a resumed study's) does nothing."""

    def __init__(self, plan: ReferencePlan, metric: str, mode: str, num_samples: int) -> None:
        self.plan: ReferencePlan | None = plan
        self.metric, self.mode, self.num_samples = metric, mode, num_samples
        self._best: dict[str, float] = {}  # trial id -> best value reported so far (this session)

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": None, "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
                "_best": {}}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        # Called before Ray adds `result` to the trial's own metric analysis.
        value = result.get(self.metric)
        if value is not None:
            self._best[trial.trial_id] = self._better(self._best.get(trial.trial_id), float(value))
        self._check(trials, {})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trials, {trial.trial_id: "ended"})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        # Ray calls this only for a failure it will not retry.
        self._check(trials, {trial.trial_id: "failed"})

    def _better(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return b if a is None else a
        return max(a, b) if self.mode == "max" else min(a, b)

    def _so_far(self, trial, state: str | None) -> TrialSoFar:
        analysis = (trial.metric_analysis or {}).get(self.metric, {})  # restored trials: what Ray recorded
        best = self._better(self._best.get(trial.trial_id), analysis.get(self.mode))
        status = {"TERMINATED": "ended", "ERROR": "failed"}.get(trial.status, "running")
        return TrialSoFar(number_of_trial_id(trial.trial_id), best, state or status)

    def _check(self, trials: list, now: dict[str, str]) -> None:
        if self.plan is None or self.plan.started:
            return
        winner = certain_best([self._so_far(t, now.get(t.trial_id)) for t in trials], self.num_samples, self.mode)
        if winner is None:
            return
        trial = next(t for t in trials if number_of_trial_id(t.trial_id) == winner)
        try:
            self.plan.start(winner, trial.config)
        except Exception:  # never fail the search for this: the stage trains the references after it instead
            logger.exception("could not start the references during the search; they start after it")
            self.plan = None

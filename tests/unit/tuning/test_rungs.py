"""Trials side by side under ASHA decide as one trial at a time when each waits for its turn at a rung
(`multimodal.tuning.rungs`): the board's rules, and Ray's ASHA driven by simulated studies of random learning
curves and epoch times (no Ray cluster: the scheduler is called as Tune's controller calls it)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler

from multimodal.tuning.ray_private import asha_rungs
from multimodal.tuning.rungs import RungBoard, milestones


@pytest.mark.parametrize("grace, rf, max_t", [(4, 2, 20), (1, 2, 2), (2, 2, 8), (4, 2, 16), (1, 3, 27), (3, 4, 50)])
def test_milestones_are_the_rungs_of_rays_asha(grace, rf, max_t) -> None:
    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                         reduction_factor=rf)
    assert milestones(grace, rf, max_t) == asha_rungs(asha)


def test_a_trial_waits_at_a_rung_for_earlier_trials_not_yet_decided_there() -> None:
    board = RungBoard([2, 4])
    for trial in ("t_00000", "t_00001", "t_00002"):
        board.add(trial)
    board.decide("t_00000", 1)
    assert board.waiting_on("t_00002", 2) == ["t_00000", "t_00001"]
    assert board.waiting_on("t_00002", 3) == []  # off the rungs nobody waits
    assert board.waiting_on("t_00000", 2) == []  # never for a later trial
    board.decide("t_00000", 2)
    board.end("t_00001")  # ended before the rung (ASHA stop, early stop, final failure)
    assert board.waiting_on("t_00002", 2) == []
    assert board.waiting_on("t_00002", 4) == ["t_00000"]
    board.add("t_00001")  # a retried trial is added again and will report the rung again
    assert board.waiting_on("t_00002", 4) == ["t_00000", "t_00001"]


def simulate(curves: list[list[float]], seconds: list[list[float]], slots: int, ordered: bool) -> list[tuple]:
    """A study of `len(curves)` trials, `slots` at a time, each epoch of trial i taking `seconds[i][e]`; trial i
    reports `curves[i][e]` after epoch e+1 unless ASHA stopped it. Returns every (trial, epoch, decision)."""
    asha = ASHAScheduler(time_attr="epoch", metric="acc", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    board = RungBoard(milestones(1, 2, 8))
    trials = [SimpleNamespace(trial_id=f"t_{i:05d}", status="RUNNING") for i in range(len(curves))]
    pending, running, decisions = list(range(len(curves))), {}, []  # running: trial -> (clock, next epoch)

    def start(clock: float) -> None:
        while pending and len(running) < slots:
            i = pending.pop(0)
            asha.on_trial_add(None, trials[i])
            board.add(trials[i].trial_id)
            running[i] = (clock + seconds[i][0], 1)

    start(0.0)
    while running:
        ready = [i for i, (_, epoch) in running.items()
                 if not ordered or not board.waiting_on(trials[i].trial_id, epoch)]
        assert ready, "every running trial waits: a deadlock"
        i = min(ready, key=lambda k: (running[k][0], k))
        clock, epoch = running[i]
        decision = asha.on_trial_result(None, trials[i], {"epoch": epoch, "acc": curves[i][epoch - 1]})
        board.decide(trials[i].trial_id, epoch)
        decisions.append((i, epoch, decision))
        if decision == "STOP" or epoch == len(curves[i]):
            del running[i]
            board.end(trials[i].trial_id)
            start(clock)
        else:
            running[i] = (clock + seconds[i][epoch], epoch + 1)
        for k, (at, e) in running.items():  # a trial that waited reports no earlier than what it waited for
            running[k] = (max(at, clock), e)
    return sorted(decisions)


def random_study(seed: int, n: int = 8) -> tuple[list[list[float]], list[list[float]]]:
    rng = random.Random(seed)
    curves = [[min(1.0, rng.uniform(0.1, 0.5) + rng.uniform(0.0, 0.08) * e) for e in range(8)] for _ in range(n)]
    seconds = [[rng.uniform(0.5, 3.0) for _ in range(8)] for _ in range(n)]
    return curves, seconds


@pytest.mark.parametrize("slots", [2, 3])
def test_side_by_side_trials_waiting_their_turn_get_the_decisions_of_one_at_a_time(slots) -> None:
    for seed in range(30):
        curves, seconds = random_study(seed)
        assert simulate(curves, seconds, slots, ordered=True) == simulate(curves, seconds, 1, ordered=False), seed


def test_without_the_turns_side_by_side_trials_change_asha_decisions() -> None:
    """The reason for the board: unordered, the same study's decisions depend on epoch times."""
    changed = [seed for seed in range(30)
               if simulate(*random_study(seed), 2, ordered=False) != simulate(*random_study(seed), 1, ordered=False)]
    assert changed

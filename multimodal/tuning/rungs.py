"""ASHA with trials running side by side, deciding exactly as it would one trial at a time.

ASHA stops a trial at a rung (epoch 4, 8, 16 ... of the default) when its metric falls below the best 1/rf of the
values recorded at that rung *so far*. One trial at a time, trial k meets the values of trials 0..k-1 at each rung;
two at a time, it meets whichever happened to arrive first, so the chosen model would depend on timing.

Here the order is restored: a trial reaching a rung waits until every trial created before it has either been
decided at that rung or ended (stopped earlier, early-stopped, failed for good). Then the values ASHA holds at the
rung are those of the earlier trials that reached it, as in the sequential study, and every decision, hence the
chosen model, is the same. Rungs only: between them, trials train at full speed; a wait is rare (an earlier trial
has usually passed the rung already) and costs only the waiting trial's CPU while it lasts.

The board is a small Ray actor (0 CPUs) the driver's scheduler writes to and the trials read; it works on a
cluster as on one machine. `RungBoard` holds the logic, `RungBoardActor` serves it across processes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multimodal.tuning.ray_private import asha_settings
from multimodal.tuning.resume import ResumableASHA

logger = logging.getLogger(__name__)

WAIT_SLICE_S = 10.0  # one blocking call to the board; a trial asks again until its turn comes
_HELD: dict[str, Any] = {}  # the driver's handles of its boards, by name


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which ASHA (one bracket) records and decides: Ray's `_Bracket` rungs, grace * rf^k."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(count)]


class RungBoard:
    """Which trials exist (in creation order: Ray's trial ids end in a zero-padded counter), the last epoch the
    scheduler has decided for each, and which have ended."""

    def __init__(self, rungs: list[int]):
        self.rungs = set(rungs)
        self.decided: dict[str, int] = {}
        self.ended: set[str] = set()

    def add(self, trial_id: str) -> None:
        self.decided.setdefault(trial_id, 0)
        self.ended.discard(trial_id)  # a retried trial is added again: it has not ended

    def decide(self, trial_id: str, epoch: int) -> None:
        self.decided[trial_id] = max(self.decided.get(trial_id, 0), epoch)

    def end(self, trial_id: str) -> None:
        self.ended.add(trial_id)

    def waiting_on(self, trial_id: str, epoch: int) -> list[str]:
        """The earlier trials that trial `trial_id` must wait for before reporting `epoch` (none off the rungs)."""
        if epoch not in self.rungs:
            return []
        return sorted(t for t, last in self.decided.items()
                      if t < trial_id and t not in self.ended and last < epoch)


class RungBoardActor:
    """`RungBoard` shared by the scheduler (driver) and the trials; `wait` blocks until a trial's turn or a slice
    of time has passed (threaded actor: updates get in while trials wait)."""

    def __init__(self):
        self._board = RungBoard([])
        self._changed = threading.Condition()

    def reset(self, rungs: list[int]) -> None:
        with self._changed:
            self._board = RungBoard(rungs)
            self._changed.notify_all()

    def update(self, kind: str, trial_id: str, epoch: int = 0) -> None:
        with self._changed:
            if kind == "add":
                self._board.add(trial_id)
            elif kind == "decide":
                self._board.decide(trial_id, epoch)
            else:
                self._board.end(trial_id)
            self._changed.notify_all()

    def wait(self, trial_id: str, epoch: int, timeout: float) -> list[str]:
        with self._changed:
            self._changed.wait_for(lambda: not self._board.waiting_on(trial_id, epoch), timeout=timeout)
            return self._board.waiting_on(trial_id, epoch)


def board_name(study: Path) -> str:
    """The board's actor name: fixed per study folder, so a resumed study (whose scheduler Ray unpickles) and its
    new trials find the board of the new session."""
    return "rung-board-" + hashlib.sha256(str(study).encode()).hexdigest()[:16]


def start_board(study: Path, rungs: list[int]) -> str:
    """Start (or reuse and clear) the study's board actor, 0 CPUs; returns its name. The driver holds its handle
    (Ray ends a named actor when its last handle goes), so it lives as long as the driver's Ray session."""
    import ray

    name = board_name(study)
    actor = ray.remote(num_cpus=0, max_concurrency=64)(RungBoardActor)
    _HELD[name] = actor.options(name=name, get_if_exists=True).remote()
    ray.get(_HELD[name].reset.remote(rungs))
    return name


def turn_keeper(name: str | None) -> Callable[[int], None]:
    """In a trial: a function to call before reporting an epoch, waiting until ASHA has decided every earlier
    trial at that epoch's rung (no-op without a board: one trial at a time, or no ASHA)."""
    if name is None:
        return lambda epoch: None
    import ray
    from ray import tune

    board, trial_id = ray.get_actor(name), tune.get_context().get_trial_id()

    def wait_for_turn(epoch: int) -> None:
        started, waiting = time.monotonic(), ray.get(board.wait.remote(trial_id, epoch, 0.0))
        while waiting:
            waiting = ray.get(board.wait.remote(trial_id, epoch, WAIT_SLICE_S))
        if time.monotonic() - started > 1.0:
            logger.info("epoch %d: waited %.1f s for earlier trials at this rung", epoch, time.monotonic() - started)

    return wait_for_turn


class OrderedASHA(ResumableASHA):
    """`ResumableASHA` that keeps the study's board: trials added, each result decided, trials ended."""

    def __init__(self, study: str, **kwargs: Any):
        super().__init__(study, **kwargs)
        self._board_name = board_name(Path(study))
        self._board = None  # looked up when first needed: Ray unpickles a resumed study's scheduler

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_board": None}

    def _tell(self, kind: str, trial, epoch: int = 0) -> None:
        import ray

        if self._board is None:
            self._board = ray.get_actor(self._board_name)
        self._board.update.remote(kind, trial.trial_id, epoch)  # applied in order: one caller, one actor

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self._tell("end" if trial.status in ("TERMINATED", "ERROR") else "add", trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        time_attr = asha_settings(self).time_attr
        if time_attr in result:
            self._tell("decide", trial, int(result[time_attr]))
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._tell("end", trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        if not trial.should_recover():  # a retried trial is added again and reports its rungs again
            self._tell("end", trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._tell("end", trial)

"""Trials that span workers (`tune.workers_per_trial` > 1): each Tune trial drives a Ray Train run.

The Ray Train V2 way of tuning distributed runs: the Tune trial is a function that builds a `TorchTrainer` and
calls `fit()`; its workers (a process group, gloo on CPU, nccl on CUDA) each run the trial's training
(`multimodal.tuning.trial.train_trial`, hence `multimodal.training.train.fit` data-parallel) and report every epoch with
`ray.train.report`, rank 0 with the checkpoint (model + full training state).

Ray's own `TuneReportCallback` passes only metrics and a checkpoint *path* on to Tune. Here a Train callback hands
rank 0's metrics and the persisted checkpoint to the trial, which reports both with `tune.report`: Tune then holds
the checkpoints as it does for one-process trials, so ASHA, `tune_results` (tables, best checkpoint) and
`max_failures` retries work unchanged. A retry resumes from Tune's latest checkpoint; Train's copy is scratch
(one kept, each removed only after Tune has its own) and Train itself never retries.

When Tune stops a trial (ASHA), the Train run shuts down before the trial's process ends. Otherwise the process
would take the Train controller with it (an actor it owns) while the run's placement group stays reserved: Ray
frees a placement group an actor made only once its job ends too, and Train's own cleaner asks the dashboard's
state API, which is off here; the next trials would wait for those CPUs forever. Tune stops a trial while the trial
waits in `tune.report` (reports are synchronous): `tune.report` raises SystemExit there, the trial answers the
callback with "stop", the callback raises `TrialStopped` in the controller, which shuts its worker group down
(workers ended, placement group removed) and ends the run; `ReleasesWorkers` keeps Tune's `stop` waiting meanwhile.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from multimodal.tuning.ray_private import training_thread, trial_session, with_mixins

logger = logging.getLogger(__name__)

# The trial's own process trains nothing (its workers hold the CPUs/GPUs); Ray wants a non-empty request for it.
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}
# How long a stopped trial waits for its Train run to release its workers (ending them takes Train ~5 s at most;
# Tune itself kills a trial whose stop takes longer than TUNE_FORCE_TRIAL_CLEANUP_S, 600 s).
RELEASE_TIMEOUT_S = 120.0


class TrialStopped(Exception):
    """Raised in the Train controller when Tune has stopped the trial: the run shuts its workers down and ends."""


class ReleasesWorkers:
    """Mixin of the trial's Tune Trainable: stopping the trial waits until its thread, which Tune's stop wakes with
    SystemExit in `tune.report`, has shut its Train run down (see the module docstring)."""

    def cleanup(self) -> None:
        session = trial_session()  # before Tune's cleanup, which clears it
        try:
            super().cleanup()  # sets Tune's stop event and wakes the trial's thread; does not wait for it
        finally:
            thread = training_thread(session)
            if thread is not None:
                thread.join(timeout=RELEASE_TIMEOUT_S)
                if thread.is_alive():
                    logger.warning("the trial's Ray Train run did not shut down within %.0f s; its workers' "
                                   "resources may stay reserved until the study ends", RELEASE_TIMEOUT_S)


def trial_on_workers(shared: dict[str, Any], workers: int, per_worker: dict[str, float], study: Path):
    """The Tune trainable of a study whose trials run on `workers` Ray Train workers taking `per_worker` each."""
    from ray import tune

    trainable = tune.with_parameters(run_trial_on_workers, **shared, workers=workers, per_worker=per_worker,
                                     storage=str(study))
    return tune.with_resources(with_mixins(trainable, ReleasesWorkers), DRIVER_RESOURCES)


class ToTune(UserCallback):
    """In the Train controller: each report goes to the trial (rank 0's metrics, how many workers reported, the
    persisted checkpoint's path); the run waits until the trial has reported it to Tune, which copies the
    checkpoint, before it goes on (and may delete its own copy), or ends if Tune has stopped the trial."""

    def __init__(self, handoff, taken):
        self.handoff, self.taken = handoff, taken

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.handoff.put(({**metrics[0], "workers": len(metrics)}, checkpoint.path if checkpoint else None))
        if not self.taken.get():
            # A controller error of no retryable kind: Train's failure policy ends the run and shuts its workers down.
            raise TrialStopped("Tune stopped the trial (scheduler decision); the Train run releases its workers")


def run_trial_on_workers(config: dict[str, Any], *, project_dir: str, params_raw: dict[str, Any], device: str,
                         rung_board: str | None, workers: int, per_worker: dict[str, float], storage: str) -> None:
    """One Ray Tune trial as a Ray Train run of `workers` data-parallel workers; reports each epoch to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from multimodal.tuning.rungs import turn_keeper

    wait_for_turn = turn_keeper(rung_board)  # at an ASHA rung, report after the earlier trials
    name = f"train_{tune.get_context().get_trial_id()}"
    shutil.rmtree(Path(storage) / name, ignore_errors=True)  # an earlier attempt's scratch: Tune's checkpoint counts
    restored = tune.get_checkpoint()
    handoff, taken = (Queue(maxsize=1, actor_options={"num_cpus": 0}) for _ in range(2))
    cuda = device == "cuda"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "project_dir": project_dir, "params_raw": params_raw, "cuda": cuda,
                           "restored": restored.path if restored else None},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=cuda,
            resources_per_worker={"CPU": per_worker["cpu"], **({"GPU": per_worker["gpu"]} if cuda else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=[ToTune(handoff, taken)],
            failure_config=ray.train.FailureConfig(max_failures=0),  # retries are Tune's (tune.max_failures)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
    failed: list[BaseException] = []

    def train() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # noqa: BLE001 - raised again in the trial's thread below
            failed.append(error)
        finally:
            handoff.put(None)

    # fit() blocks until the run ends; the reports arrive meanwhile and must be made from the trial's thread.
    runner = threading.Thread(target=train, name="ray-train-run", daemon=True)
    runner.start()
    try:
        while (item := handoff.get()) is not None:
            values, path = item
            wait_for_turn(values["epoch"])
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(path) if path else None)
            taken.put(True)
    except SystemExit:  # Tune stopped the trial: the run ends and releases its workers before the trial does
        taken.put(False)
        runner.join()
        logger.info("trial stopped by Tune; its Ray Train run has shut down its %d workers", workers)
        raise
    runner.join()
    if failed:
        raise worker_error(failed[0])


def worker_error(error: BaseException) -> BaseException:
    """The first failing worker's own exception (the trial's error names it, as a one-process trial's does)."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        cause = failures[min(failures)]
        while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError wraps it
            cause = cause.cause
        return cause
    return error


def train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: the trial's training on this rank. Every rank reports each epoch (Train's reports
    are a barrier); rank 0 saves and attaches the checkpoint."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from multimodal.tuning.trial import train_trial

    rank = ray.train.get_context().get_world_rank()
    device = get_device() if loop["cuda"] else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def report(values: dict[str, Any], save) -> None:
        if rank != 0:
            ray.train.report(values)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp))
            ray.train.report(values, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    restored = ray.train.Checkpoint(loop["restored"]) if loop["restored"] else None
    train_trial(loop["config"], loop["project_dir"], loop["params_raw"], str(device), report, restored)

"""Trials that span workers (`tune.workers_per_trial` > 1): each Tune trial drives a Ray Train run.

The Ray Train V2 way of tuning distributed runs: the Tune trial is a function that builds a `TorchTrainer` and
calls `fit()`; its workers (a process group, gloo on CPU, nccl on CUDA) each run the trial's training
(`multimodal.tune.train_trial`, hence `multimodal.train.fit` data-parallel) and report every epoch with
`ray.train.report`, rank 0 with the checkpoint (model + full training state).

Ray's own `TuneReportCallback` passes only metrics and a checkpoint *path* on to Tune. Here a Train callback hands
rank 0's metrics and the persisted checkpoint to the trial, which reports both with `tune.report`: Tune then holds
the checkpoints as it does for one-process trials, so ASHA, `tune_results` (tables, best checkpoint) and
`max_failures` retries work unchanged. A retry resumes from Tune's latest checkpoint; Train's copy is scratch
(one kept, each removed only after Tune has its own) and Train itself never retries.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ray.train import UserCallback

logger = logging.getLogger(__name__)

# The trial's own process trains nothing (its workers hold the CPUs/GPUs); Ray wants a non-empty request for it.
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}


def trial_on_workers(shared: dict[str, Any], workers: int, per_worker: dict[str, float], study: Path):
    """The Tune trainable of a study whose trials run on `workers` Ray Train workers taking `per_worker` each."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial_on_workers, **shared, workers=workers, per_worker=per_worker,
                             storage=str(study)),
        DRIVER_RESOURCES)


class ToTune(UserCallback):
    """In the Train controller: each report goes to the trial (rank 0's metrics, how many workers reported, the
    persisted checkpoint's path); the run waits until the trial has reported it to Tune, which copies the
    checkpoint, before it goes on (and may delete its own copy)."""

    def __init__(self, handoff, taken):
        self.handoff, self.taken = handoff, taken

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.handoff.put(({**metrics[0], "workers": len(metrics)}, checkpoint.path if checkpoint else None))
        self.taken.get()


def run_trial_on_workers(config: dict[str, Any], *, project_dir: str, params_raw: dict[str, Any], device: str,
                         workers: int, per_worker: dict[str, float], storage: str) -> None:
    """One Ray Tune trial as a Ray Train run of `workers` data-parallel workers; reports each epoch to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

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
    while (item := handoff.get()) is not None:
        values, path = item
        tune.report(values, checkpoint=tune.Checkpoint.from_directory(path) if path else None)
        taken.put(True)
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

    from multimodal.tune import train_trial

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

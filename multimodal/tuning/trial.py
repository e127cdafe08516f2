"""One trial: `finetune` with the sampled knobs, in the process that trains (the trial, or each Ray Train worker).

Trials wrap the same training loop as everything else (`multimodal.training.train.fit`); each epoch a trial reports
its metrics with a checkpoint holding the model and the full training state.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from multimodal.pipeline.params import stage_params
from multimodal.pipeline.stage_params import StageParams
from multimodal.tuning.params import TUNE, with_searched
from multimodal.tuning.results import CHECKPOINT_STATE, plain

logger = logging.getLogger(__name__)


def trial_train_config(params: StageParams, config: dict[str, Any]):
    """The TrainConfig a trial trains with: fixed knobs, the sampled ones (a dotted name such as
    `input_norm.audio` sets one entry of a nested knob), the seed and ASHA's epoch budget.

    The one place a TrainConfig is made from params; tests and benchmarks override its knobs, never default them.
    """
    from multimodal.training.finetune import train_config

    values = with_searched(params.tune.fixed.model_dump(), {k: plain(v) for k, v in config.items()})
    return train_config({**values, "seed": params.base.seed, "max_epochs": params.tune.asha.max_epochs,
                         "epoch_limit": None})


def prepare_trial(params: StageParams, cfg):
    """Train/val data and the initial model of a trial config: (model, spec, train, val)."""
    from multimodal.training.finetune import initial_model
    from multimodal.training.load_data import load_labels, load_splits

    # The strategy decides which modalities are read as cached features (`frozen`: all of them).
    data = load_splits(params, ("train", "val"), strategy=cfg.strategy)
    model, spec = initial_model(Path(params.base.paths.aligned), load_labels(params), data["train"].modalities, cfg)
    return model, spec, data["train"], data["val"]


# report(values, save): hand one epoch's metrics on; `save(directory)` writes its checkpoint there when wanted.
Report = Callable[[dict[str, Any], Callable[[Path], None]], None]


def train_trial(config: dict[str, Any], project_dir: str, params_raw: dict[str, Any], device: str, report: Report,
                restored=None) -> None:
    """A trial's training in the process that trains (the trial itself, or each of its Ray Train workers):
    fine-tune with the sampled config, continuing from the checkpoint `restored` (a retry) if given; each epoch
    `report` gets the metrics and a way to save a checkpoint with the model and the full training state."""
    import ray

    from multimodal.models.model import save_model
    from multimodal.pipeline.runtime import seed_everything
    from multimodal.training.train import fit

    os.chdir(project_dir)  # Ray starts trials elsewhere; stage paths are relative to the project
    params = stage_params(params_raw, stage="tune", schema=TUNE)  # the keys the stage read, checked again
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))  # `reproduce_best` uses the same count
    cfg = trial_train_config(params, config)
    seed_everything(cfg.seed)
    model, spec, train, val = prepare_trial(params, cfg)
    # The node is recorded so a study on an existing cluster shows where its trials ran.
    node_id = ray.get_runtime_context().get_node_id()

    def on_epoch(metrics, model, save_state) -> None:
        values = {"epoch": metrics.epoch, "val_accuracy": metrics.val_accuracy, "val_loss": metrics.val_loss,
                  "train_loss": metrics.train_loss, "seed": cfg.seed, "node_id": node_id}

        def save(directory: Path) -> None:
            save_state(directory / CHECKPOINT_STATE)
            save_model(model, spec, directory / "model")

        report(values, save)

    # A retried trial gets its last checkpoint back and continues from that epoch.
    with restored.as_directory() if restored else nullcontext() as directory:
        resume_from = Path(directory) / CHECKPOINT_STATE if directory else None
        if resume_from:
            logger.info("trial resumes from %s", resume_from)
        fit(model, train, val, cfg, torch.device(device), on_epoch=on_epoch, resume_from=resume_from)


def run_trial(config: dict[str, Any], *, project_dir: str, params_raw: dict[str, Any], device: str,
              rung_board: str | None) -> None:
    """One Ray trial in one process: each epoch report metrics with a full checkpoint to Tune (at an ASHA rung,
    after the earlier trials: `multimodal.tuning.rungs`)."""
    from ray import tune

    from multimodal.tuning.rungs import turn_keeper

    wait_for_turn = turn_keeper(rung_board)

    def report(values: dict[str, Any], save: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp))
            wait_for_turn(values["epoch"])
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_trial(config, project_dir, params_raw, device, report, tune.get_checkpoint())

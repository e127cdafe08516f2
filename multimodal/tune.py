"""Ray Tune over the fine-tuning space in params.yaml, with ASHA; trials wrap `finetune` unchanged."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from multimodal.config import Params, Tune

logger = logging.getLogger(__name__)


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """params.yaml `{name: {loguniform: [lo, hi]}}` -> Ray Tune sampling objects."""
    from ray import tune

    makers = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint,
              "choice": lambda *options: tune.choice(list(options))}
    return {name: makers[kind](*args) for name, spec in space.items() for kind, args in spec.items()}


def ray_home(project_dir: Path) -> Path:
    """A HOME for Ray holding `ray_bootstrap_config.yaml`: Ray 2.60 then skips its cloud-metadata probe."""
    home = project_dir / ".ray" / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    return home


def start_ray(cfg: Tune, project_dir: Path) -> None:
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["HOME"] = str(ray_home(project_dir))
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 object_store_memory=cfg.object_store_memory_mb * 2**20, log_to_driver=True)


def trial_resources(cfg: Tune) -> dict[str, float]:
    """Resources of one trial, checked against the cluster so an impossible request fails now, not hangs."""
    import ray

    available = ray.cluster_resources()
    wanted = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial if available.get("GPU", 0) > 0 else 0.0}
    problems = [f"{k}={v:g} per trial but the cluster has {available.get(k.upper(), 0):g}"
                for k, v in wanted.items() if v > available.get(k.upper(), 0)]
    if problems:
        raise RuntimeError("tune: resource request cannot be met: " + "; ".join(problems))
    return wanted


def run_trial(config: dict[str, Any], *, project_dir: str, params_raw: dict[str, Any]) -> None:
    """One Ray trial: fine-tune with the sampled config, report val metrics each epoch, checkpoint on improvement."""
    from ray import tune

    from multimodal.config import Params
    from multimodal.finetune import initial_model, train_config
    from multimodal.model import save_model
    from multimodal.runtime import pick_device
    from multimodal.splits import load_labels, load_splits
    from multimodal.train import fit

    os.chdir(project_dir)  # Ray starts trials elsewhere; stage paths are relative to the project
    params = Params.model_validate(params_raw)
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))
    data = load_splits(params, ("train", "val"))
    cfg = train_config({**params.tune.fixed.model_dump(), **config, "seed": params.base.seed,
                        "max_epochs": params.tune.asha.max_epochs})
    model, spec = initial_model(Path(params.base.paths.aligned), load_labels(params), data["train"].modalities, cfg)

    def report(metrics, model) -> None:
        values = {"val_accuracy": metrics.val_accuracy, "val_loss": metrics.val_loss,
                  "train_loss": metrics.train_loss, "epoch": metrics.epoch, "seed": cfg.seed}
        if not metrics.improved:
            tune.report(values)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_model(model, spec, tmp)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit(model, data["train"], data["val"], cfg, pick_device(params.base.device), on_epoch=report)


def run_search(params: Params, project_dir: Path, storage: Path):
    """Run the study; returns Ray's ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    cfg = params.tune
    start_ray(cfg, project_dir)
    resources = trial_resources(cfg)
    trainable = tune.with_resources(
        # Trials get the validated params as plain JSON data (no objects pickled) and re-validate them.
        tune.with_parameters(run_trial, project_dir=str(project_dir),
                             params_raw=params.model_dump(mode="json", by_alias=True)), resources
    )
    scheduler = ASHAScheduler(max_t=cfg.asha.max_epochs, grace_period=cfg.asha.grace_period,
                              reduction_factor=cfg.asha.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg.space),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, scheduler=scheduler, num_samples=cfg.num_samples,
            # Seeded sampling: the same params draw the same trial configs.
            search_alg=BasicVariantGenerator(random_state=params.base.seed, max_concurrent=cfg.max_concurrent_trials),
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(storage.resolve()), verbose=1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )
    return tuner.fit()

"""Ray Tune over the fine-tuning space in params.yaml: ASHA, random or Optuna search, retries from checkpoints.

Step three of the tune story (`multimodal.train` has it whole): each trial is `finetune` with sampled knobs.

Trials wrap the same training loop as everything else (`multimodal.train.fit`); each epoch a trial reports its
metrics with a checkpoint holding the model and the full training state, so a retried trial (`tune.max_failures`)
continues from its last epoch instead of starting over. With `tune.workers_per_trial` > 1 a trial is a Ray Train
run of that many data-parallel workers (`multimodal.tune_workers`), reporting the same way.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from multimodal.config import Params, Tune, with_searched
from multimodal.ray_cluster import cluster_address, join_ray
from multimodal.stage_params import stage_view
from multimodal.tune_results import CHECKPOINT_STATE, plain

logger = logging.getLogger(__name__)

STUDY = "tune"  # the study's folder under the storage path


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """params.yaml `{name: {loguniform: [lo, hi]}}` -> Ray Tune sampling objects (randint: high excluded)."""
    from ray import tune

    makers = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint,
              "choice": lambda *options: tune.choice(list(options))}
    return {name: makers[kind](*args) for name, spec in space.items() for kind, args in spec.items()}


def search_algorithm(cfg: Tune, seed: int):
    """The searcher of `tune.search`, seeded from `base.seed`, running at most `max_concurrent_trials` at once."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # metric and mode come from TuneConfig; Optuna's TPE sampler gets the seed.
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=cfg.max_concurrent_trials)
    return BasicVariantGenerator(random_state=seed, max_concurrent=cfg.max_concurrent_trials)


def trial_train_config(params: Params, config: dict[str, Any]):
    """The TrainConfig a trial trains with: fixed knobs, the sampled ones (a dotted name such as
    `input_norm.audio` sets one entry of a nested knob), the seed and ASHA's epoch budget.

    The one place a TrainConfig is made from params; tests and benchmarks override its knobs, never default them.
    """
    from multimodal.finetune import train_config

    values = with_searched(params.tune.fixed.model_dump(), {k: plain(v) for k, v in config.items()})
    return train_config({**values, "seed": params.base.seed, "max_epochs": params.tune.asha.max_epochs,
                         "epoch_limit": None})


def start_ray(cfg: Tune, project_dir: Path) -> str | None:
    """Join `tune.address` / RAY_ADDRESS, or start a local Ray; returns the address joined (None: local)."""
    return join_ray(cluster_address(cfg.address), project_dir, num_cpus=os.cpu_count(),
                    num_gpus=torch.cuda.device_count(), object_store_memory=cfg.object_store_memory_mb * 2**20)


def decide_resources(cfg: Tune, device: str, nodes: list[dict[str, float]]) -> dict[str, float]:
    """CPUs and GPUs of one trial (of each of its workers, `tune.workers_per_trial` > 1), or an error naming the
    param key and what the cluster has.

    `nodes` holds each alive node's resources (`{"CPU": 2.0, "GPU": 1.0, ...}`); a trial (a worker) must fit on one
    node, and the workers of one trial must fit on the cluster at once.
    GPUs are used when the cluster has any (`base.device: auto`) or `base.device: cuda`; never with `cpu`.
    """
    largest = {kind: max((n.get(kind, 0.0) for n in nodes), default=0.0) for kind in ("CPU", "GPU")}
    total = {kind: sum(n.get(kind, 0.0) for n in nodes) for kind in ("CPU", "GPU")}
    has = f"the cluster has {len(nodes)} node(s), at most {largest['CPU']:g} CPUs and {largest['GPU']:g} GPUs " \
          f"on one (in all {total['CPU']:g} CPUs, {total['GPU']:g} GPUs)"
    use_gpu = device == "cuda" or (device == "auto" and total["GPU"] > 0)
    wanted = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial if use_gpu else 0.0}
    problems = []
    if wanted["cpu"] > largest["CPU"]:
        problems.append(f"tune.cpus_per_trial={wanted['cpu']:g}")
    if device == "cuda" and total["GPU"] == 0:
        problems.append("base.device=cuda")
    elif wanted["gpu"] > largest["GPU"]:
        problems.append(f"tune.gpus_per_trial={wanted['gpu']:g}")
    if device == "cuda" and wanted["gpu"] == 0:
        problems.append("base.device=cuda with tune.gpus_per_trial=0")
    workers = cfg.workers_per_trial
    if workers > 1:
        fits = sum(workers_on(node, wanted) for node in nodes)
        if fits < workers:
            each = f"{wanted['cpu']:g} CPUs" + (f" and {wanted['gpu']:g} GPUs" if wanted["gpu"] else "")
            problems.append(f"tune.workers_per_trial={workers} workers of {each} each (tune.cpus_per_trial, "
                            f"tune.gpus_per_trial are per worker; {fits} fit at once)")
        if 0 < wanted["gpu"] < 1:  # NCCL refuses two ranks on one device
            problems.append(f"tune.gpus_per_trial={wanted['gpu']:g} with tune.workers_per_trial={workers} (each "
                            "worker needs a whole GPU)")
    if problems:
        raise RuntimeError(f"tune: a trial cannot be placed: {', '.join(problems)} but {has}")
    return wanted


def workers_on(node: dict[str, float], each: dict[str, float]) -> int:
    """How many workers taking `each` ({"cpu": .., "gpu": ..}) one node holds."""
    counts = [math.floor(node.get(kind.upper(), 0.0) / need + 1e-9) for kind, need in each.items() if need > 0]
    return min(counts, default=0)


def trial_resources(cfg: Tune, device: str) -> dict[str, float]:
    """`decide_resources` against the running cluster, once, before launch: an impossible request fails now."""
    import ray

    return decide_resources(cfg, device, [n["Resources"] for n in ray.nodes() if n["Alive"]])


def prepare_trial(params: Params, cfg):
    """Train/val data and the initial model of a trial config: (model, spec, train, val)."""
    from multimodal.finetune import initial_model
    from multimodal.load_data import load_labels, load_splits

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

    from multimodal.model import save_model
    from multimodal.runtime import seed_everything
    from multimodal.train import fit

    os.chdir(project_dir)  # Ray starts trials elsewhere; stage paths are relative to the project
    params = stage_view(Params.model_validate(params_raw), "tune")  # the same keys the stage may read
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


def run_trial(config: dict[str, Any], *, project_dir: str, params_raw: dict[str, Any], device: str) -> None:
    """One Ray trial in one process: each epoch report metrics with a full checkpoint to Tune."""
    from ray import tune

    def report(values: dict[str, Any], save: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp))
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_trial(config, project_dir, params_raw, device, report, tune.get_checkpoint())


def run_search(params: Params, project_dir: Path, storage: Path):
    """Run the study, or resume the interrupted one in `storage` if it had the same inputs; returns Ray's
    ResultGrid."""
    cfg = params.tune
    start_ray(cfg, project_dir)  # first: it sets the environment Ray reads when imported
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from multimodal.tune_resume import ResumableASHA, prepare_study, study_fingerprint
    from multimodal.tune_workers import trial_on_workers

    # 1. Resources, decided once: the device every trial trains on follows from them.
    resources = trial_resources(cfg, params.base.device)
    device = "cuda" if resources["gpu"] > 0 else "cpu"
    study = storage.resolve() / STUDY
    # Trials get the validated params as plain JSON data (no objects pickled) and re-validate them.
    shared = {"project_dir": str(project_dir.resolve()), "params_raw": params.model_dump(mode="json", by_alias=True),
              "device": device}
    if cfg.workers_per_trial == 1:
        logger.info("each trial takes %s and trains on %s", resources, device)
        trainable = tune.with_resources(tune.with_parameters(run_trial, **shared), resources)
    else:
        logger.info("each trial trains on %d %s workers of %s each (Ray Train)", cfg.workers_per_trial, device,
                    resources)
        trainable = trial_on_workers(shared, cfg.workers_per_trial, resources, study)
    # 2. An interrupted study of the same inputs resumes: finished trials stay, unfinished ones continue from their
    # last checkpoint, errored ones stay errored (as they would have).
    if prepare_study(study, study_fingerprint(params, project_dir)):
        logger.info("resuming the study in %s: finished trials are kept, unfinished ones continue", study)
        return tune.Tuner.restore(str(study), trainable, resume_unfinished=True, resume_errored=False).fit()
    # 3. A new study: the search and ASHA decide which trials run and how long.
    if cfg.scheduler == "asha":
        scheduler = ResumableASHA(str(study), time_attr="epoch", max_t=cfg.asha.max_epochs,
                                  grace_period=cfg.asha.grace_period, reduction_factor=cfg.asha.reduction_factor)
    else:  # every trial runs to completion (bench/tune_search.py compares the two)
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg.space),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, scheduler=scheduler,
                                    num_samples=cfg.num_samples, search_alg=search_algorithm(cfg, params.base.seed),
                                    # One worker process runs trial after trial: no re-import of torch per trial.
                                    # A trial on Ray Train workers starts new workers anyway.
                                    reuse_actors=cfg.workers_per_trial == 1),
        run_config=tune.RunConfig(
            name=STUDY, storage_path=str(storage.resolve()), verbose=1,
            # A failed trial is retried from its latest checkpoint; Ray keeps that one even when it is not
            # among the best `keep_checkpoints` (see docs/tune.md).
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )
    return tuner.fit()

"""Ray Tune over the fine-tuning space in params.yaml: ASHA, random or Optuna search, retries from checkpoints.

Step three of the tune story (`multimodal.training.train` has it whole): each trial (`multimodal.tuning.trial`) is
`finetune` with sampled knobs, reporting every epoch with a checkpoint, so a retried trial (`tune.max_failures`)
continues from its last epoch instead of starting over. With `tune.workers_per_trial` > 1 a trial is a Ray Train
run of that many data-parallel workers (`multimodal.tuning.workers`), reporting the same way.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from multimodal.pipeline.ray_cluster import cluster_address, join_ray
from multimodal.pipeline.stage_params import StageParams
from multimodal.tuning.params import Tune
from multimodal.tuning.ray_private import require_checked_ray
from multimodal.tuning.references import ReferencePlan
from multimodal.tuning.trial import run_trial

logger = logging.getLogger(__name__)

STUDY = "tune"  # the study's folder under the storage path


def study_dir(storage: Path) -> Path:
    """The study's folder (Ray wants an absolute path)."""
    return storage.resolve() / STUDY


def end_study(storage: Path, outcome: str) -> None:
    """The run delivered its `outcome`: the study in `storage` is closed, the next run starts a fresh one
    (`multimodal.tuning.resume`)."""
    from multimodal.tuning.resume import end_study as close

    close(study_dir(storage), outcome)


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


def build_scheduler(cfg: Tune, study: Path):
    """The trial scheduler of `tune.scheduler`: ASHA stopping weak trials at rungs of `epoch` (its decisions
    replayed from `study` when that is resumed; with trials side by side, made in trial order so they match one
    trial at a time: `multimodal.tuning.rungs`), or FIFO: every trial runs to completion (bench/tune_search.py
    compares the two)."""
    from ray.tune.schedulers import FIFOScheduler

    from multimodal.tuning.resume import ResumableASHA
    from multimodal.tuning.rungs import OrderedASHA

    if cfg.scheduler == "asha":
        asha = OrderedASHA if ordered_rungs(cfg) else ResumableASHA
        return asha(str(study), time_attr="epoch", max_t=cfg.asha.max_epochs,
                    grace_period=cfg.asha.grace_period, reduction_factor=cfg.asha.reduction_factor)
    return FIFOScheduler()


def ordered_rungs(cfg: Tune) -> bool:
    """Trials side by side under ASHA wait for their turn at each rung (a board actor keeps the order)."""
    return cfg.scheduler == "asha" and cfg.max_concurrent_trials > 1


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


def trials_at_once(cfg: Tune, each: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """`tune.max_concurrent_trials`, lowered for trials on several workers to as many as the cluster holds at once.

    Tune starts such a trial's driver first and the driver then asks for its workers: two started trials whose
    workers cannot all fit would each wait for the other's to end (a hang), where one-process trials just queue.
    """
    if cfg.workers_per_trial == 1:
        return cfg.max_concurrent_trials
    slots = sum(workers_on(node, each) for node in nodes)
    return max(1, min(cfg.max_concurrent_trials, slots // cfg.workers_per_trial))


def trial_resources(cfg: Tune, device: str) -> dict[str, float]:
    """`decide_resources` against the running cluster, once, before launch: an impossible request fails now."""
    import ray

    return decide_resources(cfg, device, [n["Resources"] for n in ray.nodes() if n["Alive"]])


def run_search(params: StageParams, project_dir: Path, storage: Path, references: ReferencePlan | None = None):
    """Run the study, or resume the interrupted one in `storage` if it had the same inputs; returns Ray's
    ResultGrid. `references`, when given, start as soon as the best trial is certain (a new study only:
    multimodal/tuning/early_references.py)."""
    cfg = params.tune
    require_checked_ray()  # before anything starts: another Ray fails here, not mid-study
    start_ray(cfg, project_dir)  # it sets the environment Ray reads when imported
    import ray
    from ray import tune

    from multimodal.tuning.early_references import StartReferencesEarly
    from multimodal.tuning.resume import prepare_study, study_fingerprint
    from multimodal.tuning.rungs import milestones, start_board
    from multimodal.tuning.workers import trial_on_workers

    # 1. Resources, decided once: the device every trial trains on follows from them.
    resources = trial_resources(cfg, params.base.device)
    device = "cuda" if resources["gpu"] > 0 else "cpu"
    if references is not None:
        references.resources = resources  # the references take what a trial takes
    study = study_dir(storage)
    # Trials get the validated params as plain JSON data (no objects pickled) and re-validate them.
    shared = {"project_dir": str(project_dir.resolve()), "params_raw": params.raw_params(),
              "device": device, "rung_board": None}
    if ordered_rungs(cfg):
        shared["rung_board"] = start_board(study, milestones(cfg.asha.grace_period, cfg.asha.reduction_factor,
                                                             cfg.asha.max_epochs))
    at_once = trials_at_once(cfg, resources, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    if at_once < cfg.max_concurrent_trials:
        logger.info("tune.max_concurrent_trials=%d lowered to %d: no more trials' workers fit on the cluster at once",
                    cfg.max_concurrent_trials, at_once)
        cfg = cfg.model_copy(update={"max_concurrent_trials": at_once})
    if cfg.workers_per_trial == 1:
        logger.info("each trial takes %s and trains on %s", resources, device)
        trainable = tune.with_resources(tune.with_parameters(run_trial, **shared), resources)
    else:
        logger.info("each trial trains on %d %s workers of %s each (Ray Train)", cfg.workers_per_trial, device,
                    resources)
        trainable = trial_on_workers(shared, cfg.workers_per_trial, resources, study)
    # 2. A study of the same inputs whose run was cut off resumes: finished trials stay, unfinished ones continue from
    # their last checkpoint, and errored ones are tried once more from theirs (a lost node, an out-of-memory kill
    # pass; a deterministic error fails again, and is recorded as before).
    if prepare_study(study, study_fingerprint(params, project_dir)):
        logger.info("resuming the study in %s: finished trials are kept, unfinished and errored ones continue", study)
        return tune.Tuner.restore(str(study), trainable, resume_unfinished=True, resume_errored=True).fit()
    # 3. A new study: the search and the scheduler (ASHA or FIFO) decide which trials run and how long.
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg.space),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, scheduler=build_scheduler(cfg, study),
                                    num_samples=cfg.num_samples, search_alg=search_algorithm(cfg, params.base.seed),
                                    # One worker process runs trial after trial: no re-import of torch per trial.
                                    # A trial on Ray Train workers starts new workers anyway.
                                    reuse_actors=cfg.workers_per_trial == 1),
        run_config=tune.RunConfig(
            name=STUDY, storage_path=str(storage.resolve()), verbose=1,
            callbacks=[StartReferencesEarly(references, cfg.metric, cfg.mode, cfg.num_samples)] if references else [],
            # A failed trial is retried from its latest checkpoint; Ray keeps that one even when it is not
            # among the best `keep_checkpoints` (see docs/tune.md).
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                    checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )
    return tuner.fit()

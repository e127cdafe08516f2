"""Unimodal references: each modality fine-tuned alone, with a small search of its own, in parallel, during the
search or after it.

Per modality, `tune.references.num_samples` candidates: the first with the best fused trial's knobs, the others with
`tune.references.space` (learning rate, dropout, weight decay, ...) drawn over them, seeded from `base.seed` and the
modality. Each trains to `tune.asha.max_epochs` with the trials' early stopping (`patience`), its best epoch chosen
on the validation rows holding its modality; the candidate of highest validation accuracy there is the reference
(ties: the first). A fused model is no longer compared with a single-modality model trained with knobs chosen for it.

One Ray task per modality on the Ray the search started (local, or the cluster of `tune.address`), each taking what
a trial takes (`tune.cpus_per_trial`, and `tune.gpus_per_trial` when the trials used GPUs) and training with that
many torch threads, seeded as a trial is: a reference depends on the params and data only, not on which task ends
first or where it runs. Two one-thread processes on two cores train ~1.7x the throughput of one two-thread process
(bench/BENCHMARKS.md, issue 21).

A task may run on another node: it writes nothing into the project. It saves its model in a temporary folder and
returns the files' bytes with its fit metrics; the driver writes them (`write_reference`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """What one reference task returns: its saved model's files ({path relative to the model folder: bytes}),
    the best validation accuracy (on the val rows holding its modality), the epochs it trained, its training
    seconds, and which candidate of its modality it is with its searched knobs."""

    modality: str
    files: dict[str, bytes]
    val_accuracy: float
    epochs: int
    seconds: float
    candidate: int = 0
    knobs: dict[str, Any] | None = None


def draw(spec: dict[str, Any], rng) -> Any:
    """One value of a `{loguniform|uniform|choice|randint: ...}` search entry."""
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "randint":
        return int(rng.integers(args[0], args[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return float(rng.uniform(args[0], args[1]))


def candidates(values: dict[str, Any], space: dict[str, dict[str, Any]], num_samples: int, seed: int,
               modality: str) -> list[dict[str, Any]]:
    """The TrainConfig values of a modality's reference candidates: `values` (the best fused trial's) first, then
    `num_samples - 1` draws of `space` over them; the same seed and modality give the same candidates."""
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(modality.encode())])
    drawn = [{name: draw(spec, rng) for name, spec in sorted(space.items())} for _ in range(num_samples - 1)]
    return [dict(values), *({**values, **d} for d in drawn)]


class ReferenceFailed(RuntimeError):
    """A reference task failed; the message names the modality."""


def train_reference(modality: str, values: dict[str, Any], project_dir: str, params_raw: dict[str, Any],
                    device: str, threads: int, candidate: int = 0, knobs: dict[str, Any] | None = None) -> Reference:
    """Fine-tune `modality` alone with the TrainConfig `values` (one candidate's), in this process, its best epoch
    chosen on the val rows holding the modality; runs as a Ray task, or directly (benchmarks)."""
    import torch

    from multimodal.models.model import save_model
    from multimodal.pipeline.params import stage_params
    from multimodal.pipeline.runtime import seed_everything
    from multimodal.training.finetune import finetune, train_config
    from multimodal.training.load_data import load_labels, load_splits
    from multimodal.tuning.params import TUNE

    os.chdir(project_dir)  # Ray starts tasks elsewhere; stage paths are relative to the project
    params = stage_params(params_raw, stage="tune", schema=TUNE)
    torch.set_num_threads(threads)  # as a trial: the thread count is part of what makes a CPU run bit-identical
    cfg = train_config(values)
    seed_everything(cfg.seed)
    started = time.monotonic()
    data = load_splits(params, ("train", "val"), strategy=cfg.strategy)
    own = data["val"].masks[modality].nonzero().flatten()  # a reference is judged where it can see
    if len(own) == 0:
        raise ReferenceFailed(f"tune: no validation row holds '{modality}': its reference cannot be selected")
    model, spec, result = finetune(Path(params.base.paths.aligned), load_labels(params), data["train"],
                                   data["val"].take(own), cfg, torch.device(device), [modality])
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, spec, tmp)
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return Reference(modality, files, float(result.best.val_accuracy), len(result.history),
                     time.monotonic() - started, candidate, knobs)


def write_reference(reference: Reference, out: Path) -> None:
    """A task's model files under `out` (a fresh folder inside the stage's atomic output)."""
    for name, data in reference.files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ReferenceFailed(f"tune: the {reference.modality} reference returned a file outside its folder: "
                                  f"{name!r}")
        path = out.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def submit_references(params, values: dict[str, Any], modalities: list[str], project_dir: Path,
                      resources: dict[str, float]) -> dict[Any, tuple[str, int]]:
    """Every modality's reference candidates as Ray tasks on the Ray already joined, each taking a trial's
    `resources` ({"cpu", "gpu"}, as the search decided them: `search.trial_resources`); {object ref: (modality,
    candidate)}, in the order of `modalities`, then candidates."""
    import ray

    options = {"num_cpus": resources["cpu"], "num_gpus": resources["gpu"]}
    device = "cuda" if resources["gpu"] > 0 else "cpu"
    threads = max(1, int(params.tune.cpus_per_trial))  # a trial's count (multimodal.tuning.trial.train_trial)
    task = ray.remote(**options, max_retries=params.tune.max_failures)(train_reference)
    search = params.tune.references
    logger.info("references: %d candidates for each of %d modalities, Ray tasks of %g CPUs and %g GPUs each, %d "
                "torch threads, on %s", search.num_samples, len(modalities), options["num_cpus"],
                options["num_gpus"], threads, device)
    shared = {"project_dir": str(project_dir.resolve()), "params_raw": params.raw_params(), "device": device,
              "threads": threads}
    pending = {}
    for m in modalities:
        for i, config in enumerate(candidates(values, search.space, search.num_samples, params.base.seed, m)):
            knobs = {k: config[k] for k in sorted(search.space)}
            ref = task.options(name=f"reference-{m}-{i}").remote(m, config, **shared, candidate=i, knobs=knobs)
            pending[ref] = (m, i)
    return pending


def train_references(params, values: dict[str, Any], modalities: list[str], project_dir: Path,
                     resources: dict[str, float]) -> dict[str, Reference]:
    """Every modality's reference, one Ray task each on the Ray already joined; {modality: Reference} in the order
    of `modalities`. The first failure cancels the rest and raises ReferenceFailed naming its modality."""
    return gather(submit_references(params, values, modalities, project_dir, resources), time.monotonic())


def gather(pending: dict[Any, tuple[str, int]], started: float) -> dict[str, Reference]:
    """The results of `pending` ({Ray object ref: (modality, candidate)}) as they finish, logged; per modality the
    candidate of highest validation accuracy (ties: the first), in submission order."""
    import ray

    order = list(dict.fromkeys(m for m, _ in pending.values()))
    done: dict[tuple[str, int], Reference] = {}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        modality, candidate = pending.pop(ref)
        try:
            reference = ray.get(ref)
        except Exception as error:  # Ray wraps the task's exception: named and raised again below
            for other in pending:
                ray.cancel(other, force=True)
            cause = getattr(error, "cause", None) or error
            raise ReferenceFailed(f"tune: the unimodal reference of '{modality}' failed: "
                                  f"{type(cause).__name__}: {cause}") from error
        done[modality, candidate] = reference
        logger.info("unimodal %s: candidate %d %s, val accuracy %.4f, %d epochs, %.0f s training (%.0f s since the "
                    "references started)", modality, candidate, reference.knobs, reference.val_accuracy,
                    reference.epochs, reference.seconds, time.monotonic() - started)
    return {m: best_candidate([r for (mod, _), r in sorted(done.items()) if mod == m]) for m in order}


def best_candidate(references: list[Reference]) -> Reference:
    """The candidate of highest validation accuracy; ties go to the lower candidate number."""
    return min(references, key=lambda r: (-r.val_accuracy, r.candidate))


class ReferencePlan:
    """The unimodal references of one study: started early (`start`, from `StartReferencesEarly`) or after the
    search (`collect`)."""

    def __init__(self, params: Any, modalities: list[str], project_dir: Path) -> None:
        self.params, self.modalities, self.project_dir = params, modalities, project_dir
        self.resources: dict[str, float] = {}   # a trial's, set by `search.run_search` once it has decided them
        self.trial: str | None = None            # the trial they started for, once started
        self._values: dict[str, Any] | None = None
        self._pending: dict[Any, str] = {}
        self._started = 0.0

    @property
    def started(self) -> bool:
        return self.trial is not None

    def start(self, trial: str, config: dict[str, Any]) -> None:
        """Submit the references with `config`'s knobs (trial `trial`'s); they run as Ray finds room."""
        from multimodal.tuning.trial import trial_train_config

        values = asdict(trial_train_config(self.params, config))
        logger.info("references start during the search: trial %s is the best whatever the rest does (every other "
                    "trial has ended below it)", trial)
        self._pending = submit_references(self.params, values, self.modalities, self.project_dir, self.resources)
        self.trial, self._values, self._started = trial, values, time.monotonic()

    def collect(self, trial: str, values: dict[str, Any]) -> dict[str, Reference]:
        """The references of the final best trial (`trial`, trained with `values`): the early ones when they had
        the same knobs, else trained now."""
        if self.started and self._values == values:
            return gather(self._pending, self._started)
        if self.started:
            import ray

            logger.warning("the references started for trial %s, but trial %s is the best: training them again",
                           self.trial, trial)
            for ref in self._pending:
                ray.cancel(ref, force=True)
        return train_references(self.params, values, self.modalities, self.project_dir, self.resources)

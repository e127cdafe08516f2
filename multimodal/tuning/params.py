"""The `tune` section of params: the search space, the fixed training knobs, the selection metric."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from multimodal.modalities.params import AUGMENT_FOR_LISTED, INPUT_NORM, LISTED, AugmentKnobs, InputNorms, ModalityNames
from multimodal.models.fusion import FUSIONS as FUSION_CLASSES
from multimodal.models.strategies import STRATEGIES
from multimodal.pipeline.params import Base, CrossCheck, Schema, Strict
from multimodal.pipeline.ray_cluster import RayAddress

FUSIONS = tuple(FUSION_CLASSES)  # what `fusion` may name: the fusions multimodal.models.fusion implements


class Asha(Strict):
    max_epochs: int = Field(ge=1)
    grace_period: int = Field(ge=1)
    reduction_factor: int = Field(ge=2)


NESTED_KNOBS = ("augment", "input_norm")  # searched by entry: `tune.space` keys such as `input_norm.audio`


def with_searched(fixed: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """`fixed` training knobs with the `sampled` ones set; a dotted key (`augment.audio.time_mask`) sets one entry
    of a nested knob. `fixed` itself is left as it is."""
    out = copy.deepcopy(fixed)
    for name, value in sampled.items():
        *parents, leaf = name.split(".")
        target = out
        for part in parents:
            target = target[part]
        target[leaf] = value
    return out


class TrainFixed(Strict):
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    patience: int = Field(ge=1)
    grad_accum_steps: int = Field(ge=1)
    grad_clip: float = Field(gt=0)
    modality_dropout: float = Field(ge=0, lt=1)
    precision: Literal["fp32", "bf16"]  # bf16: autocast of the training steps on CUDA (never on CPU)
    # Fine-tuning strategy of the encoders (multimodal.models.strategies); searchable too, e.g. {choice: [frozen,
    # lora]}.
    strategy: Literal[STRATEGIES]
    last_k: int = Field(ge=1)  # last_k: blocks trained per encoder
    lora_rank: int = Field(ge=1)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    lora_targets: list[str] = Field(min_length=1)  # module-name suffixes that get adapters
    # Fusion architecture (multimodal.models.fusion; each fusion reads its own, and saved models record them).
    attention_heads: int = Field(ge=1)  # attention: heads (reduced to a divisor of align.dim)
    attention_layers: int = Field(ge=1)  # attention: transformer layers over the modality tokens
    tensor_rank: int = Field(ge=1)  # tensor: rank of the low-rank factors
    # {modality: knobs} checked by each modality's `augment_knobs` model (multimodal.training.augment applies them).
    augment: AugmentKnobs
    augment_strength: float = Field(ge=0)  # scales every augmentation magnitude; 0 = no augmentation
    # {modality: normalisation} (`Modality.normalizations`, or none), part of the saved model.
    input_norm: InputNorms


SEARCHED_ONLY = {"lr": 0.001, "fusion": "concat", "dropout": 0.1}  # knobs only `tune.space` sets (with an example)
SEARCH_KINDS = ("loguniform", "uniform", "choice", "randint")
# Metrics that may choose a trial or checkpoint, with the direction that is better; a train metric never selects.
SELECTION_MODES = {"val_accuracy": "max", "val_loss": "min"}
SELECTION_METRICS = tuple(SELECTION_MODES)


def _space_problems(name: str, spec: Any) -> list[str]:
    """What is wrong with one `tune.space` entry, e.g. `{loguniform: [1e-4, 1e-2]}` (empty: nothing)."""
    where = f"tune.space.{name}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
        return [f"{where}: expected one of {SEARCH_KINDS} as its only key, got {spec}"]
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return [] if isinstance(args, list) and args else [f"{where}: choice needs a non-empty list, got {args}"]
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
        return [f"{where}: {kind} needs [low, high], got {args}"]
    low, high = args
    if not low < high:
        return [f"{where}: {kind} needs low < high, got {args}"]
    if kind == "loguniform" and low <= 0:
        return [f"{where}: loguniform needs low > 0, got {args}"]
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        return [f"{where}: randint needs integers [low, high) (high excluded), got {args}"]
    return []


REFERENCE_KNOBS = ("lr", "dropout", "weight_decay", "modality_dropout", "warmup_ratio", "grad_clip",
                   "augment_strength")  # what a unimodal reference's own search may vary (not the architecture)


class References(Strict):
    """The unimodal references' own search (multimodal.tuning.references): per modality, `num_samples` candidates,
    the first with the best fused trial's knobs, the others drawn from `space` over them (seeded per modality);
    each selected on the validation rows holding its modality."""

    num_samples: int = Field(ge=1)
    space: dict[str, dict[str, Any]]

    @field_validator("space")
    @classmethod
    def _space_shape(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = [f"tune.references.space.{name}: not a knob a reference searches; searchable: "
                    f"{list(REFERENCE_KNOBS)}" for name in space if name not in REFERENCE_KNOBS]
        problems += [p.replace("tune.space.", "tune.references.space.") for name, spec in space.items()
                     for p in _space_problems(name, spec)]
        if problems:
            raise ValueError("; ".join(problems))
        return space


class Tune(Strict):
    search: Literal["random", "optuna"]  # optuna: TPE seeded from base.seed
    num_samples: int = Field(ge=1)
    max_concurrent_trials: int = Field(ge=1)
    cpus_per_trial: float = Field(gt=0)
    gpus_per_trial: float = Field(ge=0)  # used only when the cluster has GPUs; below 1 shares a GPU
    workers_per_trial: int = Field(ge=1)  # >1: a trial is a Ray Train run of that many data-parallel workers
    max_failures: int = Field(ge=0)  # retries of a failed trial, from its last checkpoint
    keep_checkpoints: int = Field(ge=1)  # per trial, the best by `metric` (Ray also keeps the latest)
    top_k: int = Field(ge=1)  # best trials whose best models are saved (models/best, models/trials/<n>)
    references: References
    object_store_memory_mb: int = Field(ge=78)
    address: RayAddress
    metric: Literal[SELECTION_METRICS]
    mode: Literal["max", "min"]  # must be the metric's better direction (SELECTION_MODES)
    # asha: stop weak trials early at rungs (`asha`); fifo: every trial runs until max_epochs or its own early stop.
    scheduler: Literal["asha", "fifo"]
    asha: Asha
    space: dict[str, dict[str, Any]]
    fixed: TrainFixed

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a trial takes a fraction of one GPU or whole GPUs, got {value:g}")
        return value

    @field_validator("space")
    @classmethod
    def _space_shape(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # lr, fusion and dropout have no `tune.fixed` entry: the space always draws them (a one-value choice fixes one).
        problems = [f"tune.space.{name}: required (it has no tune.fixed value); to fix it, give a one-value choice, "
                    f"e.g. {name}: {{choice: [{example}]}}" for name, example in SEARCHED_ONLY.items() if name not in space]
        searchable = {*SEARCHED_ONLY, *TrainFixed.model_fields} - set(NESTED_KNOBS)
        for name, spec in space.items():
            if name in NESTED_KNOBS:
                problems.append(f"tune.space.{name}: search its entries one by one, e.g. {name}.audio")
            elif name not in searchable and name.split(".")[0] not in NESTED_KNOBS:
                problems.append(f"tune.space.{name}: not a training knob; searchable: {sorted(searchable)} and "
                                f"entries of {list(NESTED_KNOBS)} (e.g. augment.audio.time_mask)")
            problems += _space_problems(name, spec)
            known = {"fusion": FUSIONS, "strategy": STRATEGIES}.get(name)
            if known and isinstance(spec, dict) and set(spec.get("choice") or []) - set(known):
                problems.append(f"tune.space.{name}: unknown value(s) {sorted(set(spec['choice']) - set(known))}; "
                                f"known: {list(known)}")
        if problems:
            raise ValueError("; ".join(problems))
        return space

    @model_validator(mode="after")
    def _searched_entries_exist(self) -> "Tune":
        """A dotted `tune.space` key must name an entry of `tune.fixed`, and its sampler only valid values."""
        problems = []
        fixed = self.fixed.model_dump()
        for name, spec in self.space.items():
            if "." not in name:
                continue
            entry: Any = fixed
            for part in name.split("."):
                entry = entry.get(part, KeyError) if isinstance(entry, dict) else KeyError
            if entry is KeyError or isinstance(entry, dict):
                problems.append(f"tune.space.{name}: tune.fixed has no such entry (a single value)")
                continue
            kind, args = next(iter(spec.items()))
            values = args if kind == "choice" else [args[0], args[1] - 1 if kind == "randint" else args[1]]
            for value in values:
                try:
                    TrainFixed.model_validate(with_searched(fixed, {name: value}))
                except ValidationError as err:
                    problems.append(f"tune.space.{name}: {value!r} is not a valid value: {err.errors()[0]['msg']}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("mode")
    @classmethod
    def _mode_fits_metric(cls, mode: str, info: ValidationInfo) -> str:
        metric = info.data.get("metric")  # absent when invalid: that is reported on its own
        if metric is not None and mode != SELECTION_MODES[metric]:
            better = "higher" if SELECTION_MODES[metric] == "max" else "lower"
            raise ValueError(f"{metric} is better {better}, so tune.mode must be {SELECTION_MODES[metric]!r}, "
                             f"not {mode!r}")
        return mode


def _space_vs_cached(params: Any) -> list[str]:
    """Features cached by align carry align's normalisation (tune.fixed.input_norm): no trial can change it."""
    tune = params.tune
    strategy = tune.space.get("strategy", {}).get("choice") or [tune.fixed.strategy]
    problems = []
    for name in (n for n in tune.space if n.startswith("input_norm.")):
        modality = name.split(".")[1]
        if "frozen" in strategy or modality in params.align.freeze:
            problems.append(f"tune.space.{name}: {modality} is read as features cached by align (strategy frozen or "
                            f"align.freeze), normalised once by tune.fixed.{name} there; search it with strategies "
                            "that run the encoder, or change tune.fixed and re-run align")
    return problems


SPACE_VS_CACHED = CrossCheck(("tune", "align.freeze"), _space_vs_cached)
# The tune stage's params (a Ray trial loads them again, so they live here, not in stages/tune.py).
TUNE = Schema({"base": Base, "tune": Tune, "align.freeze": ModalityNames}, (AUGMENT_FOR_LISTED, SPACE_VS_CACHED)) \
    | LISTED | INPUT_NORM

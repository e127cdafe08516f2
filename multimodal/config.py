"""Typed view of ``params.yaml``: validated once, at the edge, with every problem reported in one error.

Stages call :func:`load_params` and pass the resulting objects down; nothing below re-reads the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODALITIES = ("image", "audio", "text")
FUSIONS = ("concat", "gated", "attention", "late", "weighted", "tensor")  # multimodal.fusion.FUSIONS implements these
STRATEGIES = ("frozen", "last_k", "lora", "full")  # multimodal.strategies.STRATEGIES implements these
# Module-name suffixes that get LoRA adapters by default: BERT/MiniLM query/value, transformers-5 ViT/AST
# q_proj/v_proj, HF ResNet convolution (peft adapts Conv2d layers too).
LORA_TARGETS = ("query", "value", "q_proj", "v_proj", "convolution")


class Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Strict):
    raw: Path
    validated: Path
    preprocessed: Path
    aligned: Path
    models: Path
    metrics: Path
    plots: Path


class Base(Strict):
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    paths: Paths


class Split(Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class Demo(Strict):
    n_samples: int = Field(3000, ge=30)
    image_components: int = Field(6, ge=1, le=784)
    image_noise: float = Field(0.35, ge=0)
    audio_snr_db: tuple[float, float] = (-6.0, 2.0)
    missing_rate: float = Field(0.1, ge=0, lt=0.34)
    sample_rate: int = 16000
    speakers: int = Field(ge=3)  # synthetic speakers, the demo's groups (multimodal.demo_speakers)


class Ingest(Strict):
    source: Literal["demo", "manifest"] = "demo"
    manifest: Path | None = None
    split: Split = Split()
    # With a given `split` column: the share of train rows (whole groups) moved to val; None keeps the split.
    carve_val_groups: float | None = Field(gt=0, lt=1)
    demo: Demo

    @model_validator(mode="after")
    def _manifest_named(self) -> "Ingest":
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("ingest.source is 'manifest' but ingest.manifest names no file")
        return self


class Validate(Strict):
    """Thresholds of the validate stage's checks and what to do with rows that fail them (docs/data.md)."""

    on_invalid: Literal["fail", "quarantine"] = "fail"
    max_listed: int = Field(20, ge=1)  # failing rows named in the error message before "... and N more"
    docs_dir: Path = Path("data/validation_docs")  # Data Docs HTML (kept apart from paths.validated: not deterministic)
    labels: list[str] | None = None  # None: the train split's labels
    unique_content: bool = True  # the same image/audio bytes under two sample ids is an error
    image_min_size: int = Field(8, ge=1)  # px, width and height alike
    image_max_size: int = Field(8192, ge=1)
    image_modes: list[str] | None = None  # None: any mode Pillow decodes
    audio_sample_rates: list[int] | None = [16000]  # None: any rate
    audio_channels: list[int] | None = [1]  # None: any channel count
    audio_min_duration_s: float = Field(0.1, ge=0)
    audio_max_duration_s: float = Field(60.0, gt=0)
    audio_max_clipping: float = Field(0.01, ge=0, le=1)  # share of samples at full scale
    audio_max_silence: float = Field(0.99, ge=0, le=1)  # share of samples below -60 dBFS
    text_min_chars: int = Field(1, ge=1)
    text_max_chars: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "Validate":
        problems = [
            f"validate.{low} ({getattr(self, low)}) exceeds validate.{high} ({getattr(self, high)})"
            for low, high in (("image_min_size", "image_max_size"), ("audio_min_duration_s", "audio_max_duration_s"),
                              ("text_min_chars", "text_max_chars"))
            if getattr(self, low) > getattr(self, high)
        ]
        problems += [f"validate.{name} is an empty list; use null to allow any value" for name in
                     ("labels", "image_modes", "audio_sample_rates", "audio_channels") if getattr(self, name) == []]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Preprocess(Strict):
    batch_size: int = Field(128, ge=1)
    shard_size: int = Field(1024, ge=1)
    modalities: list[str] = list(MODALITIES)

    @field_validator("modalities")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        if not value:
            raise ValueError("at least one modality is needed")
        return value


class ModalitySpec(BaseModel):
    """Encoder + processor settings of one modality; keys beyond `pretrained`/`config` are processor knobs."""

    model_config = ConfigDict(extra="allow", frozen=True)
    pretrained: str | None = None
    config: dict[str, Any] = {}

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Align(Strict):
    dim: int = Field(64, ge=2)
    epochs: int = Field(8, ge=0)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    temperature: float = Field(0.1, gt=0)
    freeze: list[str] = ["text"]


class Asha(Strict):
    max_epochs: int = Field(25, ge=1)
    grace_period: int = Field(5, ge=1)
    reduction_factor: int = Field(2, ge=2)


class TrainFixed(Strict):
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(5, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    modality_dropout: float = Field(0.1, ge=0, lt=1)
    # Fine-tuning strategy of the encoders (multimodal.strategies); searchable too, e.g. {choice: [frozen, lora]}.
    strategy: Literal[STRATEGIES] = "full"
    last_k: int = Field(1, ge=1)  # last_k: blocks trained per encoder
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(list(LORA_TARGETS), min_length=1)  # module-name suffixes (LORA_TARGETS)


SEARCH_KINDS = ("loguniform", "uniform", "choice", "randint")
REPORTED_METRICS = ("val_accuracy", "val_loss", "train_loss")  # what every trial reports each epoch


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


class Tune(Strict):
    search: Literal["random", "optuna"] = "random"  # optuna: TPE seeded from base.seed
    num_samples: int = Field(6, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    cpus_per_trial: float = Field(2, gt=0)
    gpus_per_trial: float = Field(1, ge=0)  # used only when the cluster has GPUs; below 1 shares a GPU
    max_failures: int = Field(1, ge=0)  # retries of a failed trial, from its last checkpoint
    keep_checkpoints: int = Field(2, ge=1)  # per trial, the best by `metric` (Ray also keeps the latest)
    object_store_memory_mb: int = Field(512, ge=78)
    address: str | None = None
    metric: Literal[REPORTED_METRICS] = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    # asha: stop weak trials early at rungs (`asha`); fifo: every trial runs until max_epochs or its own early stop.
    scheduler: Literal["asha", "fifo"] = "asha"
    asha: Asha = Asha()
    space: dict[str, dict[str, Any]]
    fixed: TrainFixed = TrainFixed()

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a trial takes a fraction of one GPU or whole GPUs, got {value:g}")
        return value

    @field_validator("space")
    @classmethod
    def _space_shape(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = []
        searchable = {"lr", "fusion", "dropout", *TrainFixed.model_fields}
        for name, spec in space.items():
            if name not in searchable:
                problems.append(f"tune.space.{name}: not a training knob; searchable: {sorted(searchable)}")
            problems += _space_problems(name, spec)
            known = {"fusion": FUSIONS, "strategy": STRATEGIES}.get(name)
            if known and isinstance(spec, dict) and set(spec.get("choice") or []) - set(known):
                problems.append(f"tune.space.{name}: unknown value(s) {sorted(set(spec['choice']) - set(known))}; "
                                f"known: {list(known)}")
        if problems:
            raise ValueError("; ".join(problems))
        return space


class Evaluate(Strict):
    batch_size: int = Field(256, ge=1)


class Params(Strict):
    base: Base
    ingest: Ingest
    validate_: Validate = Field(Validate(), alias="validate")
    preprocess: Preprocess = Preprocess()
    modalities: dict[str, ModalitySpec]
    align: Align = Align()
    tune: Tune
    evaluate: Evaluate = Evaluate()

    @model_validator(mode="after")
    def _modalities_declared(self) -> "Params":
        problems = []
        missing = [m for m in self.preprocess.modalities if m not in self.modalities]
        if missing:
            problems.append(f"preprocess.modalities lists {missing} but `modalities:` has no section for them")
        unknown_frozen = [m for m in self.align.freeze if m not in MODALITIES]
        if unknown_frozen:
            problems.append(f"align.freeze names unknown modalities {unknown_frozen}; known: {list(MODALITIES)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ParamsError(ValueError):
    """Every problem found in params.yaml, one per line."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError listing every problem at once."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"cannot read {path}: {err}") from err
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ParamsError(f"{path} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None

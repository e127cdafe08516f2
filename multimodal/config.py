"""Typed view of ``params.yaml``: validated once, at the edge, with every problem reported in one error.

Stages call :func:`load_params` and pass the resulting objects down; nothing below re-reads the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODALITIES = ("image", "audio", "text")
FUSIONS = ("concat", "gated", "attention")  # multimodal.fusion.FUSIONS implements exactly these


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


class Ingest(Strict):
    source: Literal["demo", "manifest"] = "demo"
    manifest: Path | None = None
    split: Split = Split()
    demo: Demo = Demo()

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


SEARCH_KINDS = ("loguniform", "uniform", "choice", "randint")


class Tune(Strict):
    num_samples: int = Field(6, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    cpus_per_trial: float = Field(2, gt=0)
    gpus_per_trial: float = Field(1, ge=0)
    object_store_memory_mb: int = Field(512, ge=78)
    address: str | None = None
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    asha: Asha = Asha()
    space: dict[str, dict[str, Any]]
    fixed: TrainFixed = TrainFixed()

    @field_validator("space")
    @classmethod
    def _space_shape(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = []
        searchable = {"lr", "fusion", "dropout", *TrainFixed.model_fields}
        for name, spec in space.items():
            if name not in searchable:
                problems.append(f"tune.space.{name}: not a training knob; searchable: {sorted(searchable)}")
            if len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
                problems.append(f"tune.space.{name}: expected one of {SEARCH_KINDS} as its only key, got {spec}")
            elif name == "fusion" and set(spec.get("choice", [])) - set(FUSIONS):
                problems.append(f"tune.space.fusion: unknown fusion(s) {sorted(set(spec['choice']) - set(FUSIONS))}; "
                                f"known: {list(FUSIONS)}")
        if problems:
            raise ValueError("; ".join(problems))
        return space


class Evaluate(Strict):
    batch_size: int = Field(256, ge=1)


class Params(Strict):
    base: Base
    ingest: Ingest = Ingest()
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

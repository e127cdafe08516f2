"""Typed view of ``params.yaml``: validated once, at the edge, with every problem reported in one error.

Stages call :func:`load_params` and pass the resulting objects down; nothing below re-reads the file.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from multimodal.checkpoints import is_hub

MODALITIES = ("image", "audio", "text")
FUSIONS = ("concat", "gated", "attention", "late", "weighted", "tensor")  # multimodal.fusion.FUSIONS implements these
STRATEGIES = ("frozen", "last_k", "lora", "full")  # multimodal.strategies.STRATEGIES implements these


# No field below has a default: params.yaml is the one place a knob's value lives, so a missing key is an error
# naming it (tests/unit/test_config.py keeps it that way).
class Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them (load_params suggests the closest name).
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Strict):
    demo: Path
    raw: Path
    validated: Path
    preprocessed: Path
    aligned: Path
    models: Path
    baseline: Path
    metrics: Path
    plots: Path


class Base(Strict):
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    paths: Paths


class Split(Strict):
    train: float = Field(gt=0, lt=1)
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class Demo(Strict):
    """The embedded demo dataset (stage `demo`, multimodal.demo_dataset)."""

    n_samples: int = Field(ge=30)
    image_components: int = Field(ge=1, le=784)
    image_noise: float = Field(ge=0)
    audio_snr_db: tuple[float, float]
    missing_rate: float = Field(ge=0, lt=0.34)
    sample_rate: int
    speakers: int = Field(ge=3)  # synthetic speakers, the demo's groups (multimodal.demo_speakers)


class Ingest(Strict):
    # The folder holding the manifest and every file it names: a DVC dependency of `ingest` as a whole, so any
    # file changed, added or removed there re-runs it. The demo's is `base.paths.demo`.
    dataset: Path
    manifest: str = Field(min_length=1)  # CSV or Parquet, a path inside `dataset`
    split: Split
    # With a given `split` column: the share of train rows (whole groups) moved to val; None keeps the split.
    carve_val_groups: float | None = Field(gt=0, lt=1)


class Validate(Strict):
    """Thresholds of the validate stage's checks and what to do with rows that fail them (docs/data.md)."""

    on_invalid: Literal["fail", "quarantine"]
    max_listed: int = Field(ge=1)  # failing rows named in the error message before "... and N more"
    docs_dir: Path  # Data Docs HTML (kept apart from paths.validated: not deterministic)
    labels: list[str] | None  # None: the train split's labels
    unique_content: bool  # the same image/audio bytes under two sample ids is an error
    image_min_size: int = Field(ge=1)  # px, width and height alike
    image_max_size: int = Field(ge=1)
    image_modes: list[str] | None  # None: any mode Pillow decodes
    audio_sample_rates: list[int] | None  # None: any rate
    audio_channels: list[int] | None  # None: any channel count
    audio_min_duration_s: float = Field(ge=0)
    audio_max_duration_s: float = Field(gt=0)
    audio_max_clipping: float = Field(ge=0, le=1)  # share of samples at full scale
    audio_max_silence: float = Field(ge=0, le=1)  # share of samples below -60 dBFS
    text_min_chars: int = Field(ge=1)
    text_max_chars: int = Field(ge=1)

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
    batch_size: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    modalities: list[str]

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
    """Encoder + processor settings of one modality.

    `pretrained`: null (build from `config`), `minilm`, a local folder, or `hub:org/name` with `revision` (the one
    optional key: present exactly beside a hub id). Other keys are the modality's own options, declared by its
    module (`Modality.options`); `Params` refuses unknown ones and requires every declared one.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    pretrained: str | None
    config: dict[str, Any]
    revision: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def names_hub(self) -> bool:
        """Whether this section loads anything from the Hugging Face hub (then the hub may be online)."""
        return any(is_hub(v) for v in (self.pretrained, *self.options.values()))


MODALITY_KEYS = ("pretrained", "revision", "config")  # every modality section has these, beside its options


def did_you_mean(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """`; did you mean X?` with the closest valid names, else the list of valid names."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid: {sorted(valid)}"


def params_error(loc: tuple[str, ...], message: str, value: Any) -> InitErrorDetails:
    """One problem at `loc`, for a validator that reports several at once (`ValidationError.from_exception_data`)."""
    return InitErrorDetails(type=PydanticCustomError("params", message), loc=loc, input=value)


class Align(Strict):
    dim: int = Field(ge=2)
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    temperature: float = Field(gt=0)
    weight_decay: float = Field(ge=0)  # AdamW
    freeze: list[str]


class Asha(Strict):
    max_epochs: int = Field(ge=1)
    grace_period: int = Field(ge=1)
    reduction_factor: int = Field(ge=2)


class ImageAugment(Strict):
    """Image transforms (multimodal.modalities.image.augment); each magnitude is multiplied by augment_strength."""

    affine_degrees: float = Field(ge=0, le=180)  # rotation drawn in ±degrees
    translate: float = Field(ge=0, le=1)  # shift drawn in ±translate x the side
    scale: float = Field(ge=0, lt=1)  # zoom drawn in 1 ± scale
    noise: float = Field(ge=0)  # std of Gaussian noise, in the processor's normalised pixel units
    cutout: float = Field(ge=0, le=1)  # side of one zeroed square, x the shorter side


class AudioAugment(Strict):
    """Log-mel transforms (multimodal.modalities.audio.augment); each magnitude is multiplied by augment_strength."""

    time_mask: int = Field(ge=0)  # SpecAugment: one band of up to this many frames set to 0
    freq_mask: int = Field(ge=0)  # and one band of up to this many mel bins
    gain_db: float = Field(ge=0)  # loudness drawn in ±gain_db
    shift: float = Field(ge=0, le=1)  # circular time shift drawn in ±shift x the frames
    noise_snr_db: list[float] | None = Field(min_length=2, max_length=2)  # Gaussian noise, SNR drawn in [low, high]

    @field_validator("noise_snr_db")
    @classmethod
    def _ordered(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"needs [low, high] with low <= high, got {value}")
        return value


class TextAugment(Strict):
    token_dropout: float = Field(ge=0, le=1)  # share of tokens deleted ([CLS]/[SEP] and padding never)


class Augment(Strict):
    """Training-batch augmentation per modality (multimodal.augment), applied to the train split only."""

    image: ImageAugment
    audio: AudioAugment
    text: TextAugment


class InputNorm(Strict):
    """Input normalisation per modality, part of the saved model (Modality.normalizations names them)."""

    audio: Literal["none", "utterance", "utterance_bins"]  # per clip over all bins | per clip and mel bin
    image: Literal["none", "per_image"]


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
    # Fine-tuning strategy of the encoders (multimodal.strategies); searchable too, e.g. {choice: [frozen, lora]}.
    strategy: Literal[STRATEGIES]
    last_k: int = Field(ge=1)  # last_k: blocks trained per encoder
    lora_rank: int = Field(ge=1)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    lora_targets: list[str] = Field(min_length=1)  # module-name suffixes that get adapters
    # Fusion architecture (multimodal.fusion; each fusion reads its own, and saved models record them).
    attention_heads: int = Field(ge=1)  # attention: heads (reduced to a divisor of align.dim)
    attention_layers: int = Field(ge=1)  # attention: transformer layers over the modality tokens
    tensor_rank: int = Field(ge=1)  # tensor: rank of the low-rank factors
    augment: Augment
    augment_strength: float = Field(ge=0)  # scales every augmentation magnitude; 0 = no augmentation
    input_norm: InputNorm


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


class Tune(Strict):
    search: Literal["random", "optuna"]  # optuna: TPE seeded from base.seed
    num_samples: int = Field(ge=1)
    max_concurrent_trials: int = Field(ge=1)
    cpus_per_trial: float = Field(gt=0)
    gpus_per_trial: float = Field(ge=0)  # used only when the cluster has GPUs; below 1 shares a GPU
    max_failures: int = Field(ge=0)  # retries of a failed trial, from its last checkpoint
    keep_checkpoints: int = Field(ge=1)  # per trial, the best by `metric` (Ray also keeps the latest)
    object_store_memory_mb: int = Field(ge=78)
    address: str | None
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


class Baseline(Strict):
    """The classical baseline (multimodal.baseline): logistic regression on standard features per modality."""

    c_grid: list[PositiveFloat] = Field(min_length=1)  # LogisticRegression C values; val picks one per model
    max_iter: int = Field(ge=1)
    image_size: int = Field(ge=1)  # pixel_values average-pooled to at most this side
    n_mfcc: int = Field(ge=1)  # MFCCs of the log-mel, as mean and std over frames
    max_tokens: int = Field(ge=1)  # TF-IDF vocabulary: the token ids in most train texts


class Efficiency(Strict):
    """Latency, throughput and peak memory of the saved models (multimodal.efficiency): a report, not a metric."""

    batch_sizes: list[int] = Field(min_length=1)
    warmup: int = Field(ge=0)  # untimed forward passes before the timed ones
    repeats: int = Field(ge=1)  # timed forward passes per batch size; the median counts


class Evaluate(Strict):
    batch_size: int = Field(ge=1)
    bootstrap: int = Field(ge=100)  # resamples behind every 95% interval (seeded from base.seed)
    calibration_bins: int = Field(ge=1)  # equal-width confidence bins of the ECE and the reliability diagram
    # Noise robustness curves: {modality: {kind: levels}}, a kind being a function of the modality module's
    # CORRUPTIONS; every list starts at 0, the clean input.
    corruptions: dict[str, dict[str, list[float]]]
    efficiency: Efficiency

    @field_validator("corruptions")
    @classmethod
    def _levels_from_clean(cls, corruptions: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        problems = [f"evaluate.corruptions.{m}.{kind}: {levels} must start at 0 (the clean input) and increase"
                    for m, kinds in corruptions.items() for kind, levels in kinds.items()
                    if not levels or levels[0] != 0 or any(b <= a for a, b in zip(levels, levels[1:]))]
        if problems:
            raise ValueError("; ".join(problems))
        return corruptions


class Params(Strict):
    base: Base
    demo: Demo
    ingest: Ingest
    validate_: Validate = Field(alias="validate")
    preprocess: Preprocess
    modalities: dict[str, ModalitySpec]
    align: Align
    tune: Tune
    baseline: Baseline
    evaluate: Evaluate

    @field_validator("modalities", mode="wrap")
    @classmethod
    def _modality_sections(cls, value: Any, handler: Any, info: ValidationInfo) -> dict[str, ModalitySpec]:
        """Each section's own checks and its modality's (keys, checkpoint names), all reported together."""
        from multimodal.modalities import section_errors  # late: the modality modules import this one (and torch)

        if not isinstance(value, dict):
            return handler(value)
        root = Path((info.context or {}).get("root", "."))  # local checkpoint folders: relative to params.yaml
        sections, errors = {}, []
        for name, raw in value.items():
            try:
                sections[name] = ModalitySpec.model_validate(raw)
            except ValidationError as err:
                errors += [InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"],
                                            **({"ctx": e["ctx"]} if "ctx" in e else {})) for e in err.errors()]
            options = raw.options if isinstance(raw, ModalitySpec) else dict(raw) if isinstance(raw, dict) else {}
            options = {k: v for k, v in options.items() if k not in MODALITY_KEYS}
            errors += section_errors(str(name), options, sections.get(name), root)
        if errors:
            raise ValidationError.from_exception_data("modalities", errors)
        return sections

    @model_validator(mode="after")
    def _modalities_declared(self) -> "Params":
        problems = []
        missing = [m for m in self.preprocess.modalities if m not in self.modalities]
        if missing:
            problems.append(f"preprocess.modalities lists {missing} but `modalities:` has no section for them")
        unknown_frozen = [m for m in self.align.freeze if m not in MODALITIES]
        if unknown_frozen:
            problems.append(f"align.freeze names unknown modalities {unknown_frozen}; known: {list(MODALITIES)}")
        # Features cached by align carry align's normalisation (tune.fixed.input_norm): no trial can change it.
        strategy = self.tune.space.get("strategy", {}).get("choice") or [self.tune.fixed.strategy]
        for name in (n for n in self.tune.space if n.startswith("input_norm.")):
            modality = name.split(".")[1]
            if "frozen" in strategy or modality in self.align.freeze:
                problems.append(f"tune.space.{name}: {modality} is read as features cached by align (strategy "
                                f"frozen or align.freeze), normalised once by tune.fixed.{name} there; search it "
                                "with strategies that run the encoder, or change tune.fixed and re-run align")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ParamsError(ValueError):
    """Every problem found in params.yaml, one per line."""


def load_params(path: str | Path = "params.yaml", *, stage: str | None = None) -> Params:
    """Read and validate params.yaml; raise ParamsError listing every problem at once.

    With `stage` (a `dvc.yaml` stage name such as `preprocess@image`), the result lets that stage read only the
    keys `dvc.yaml` declares for it (`multimodal.stage_params`): reading any other key is an error.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"cannot read {path}: {err}") from err
    try:
        params = Params.model_validate(raw, context={"root": path.parent})
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {_message(e)}" for e in err.errors()]
        raise ParamsError(f"{path} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None
    if stage is None:
        return params
    from multimodal.stage_params import stage_view

    return stage_view(params, stage, path.with_name("dvc.yaml"))


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key{did_you_mean(str(error['loc'][-1]), keys_at(error['loc'][:-1]))}"
    return error["msg"].removeprefix("Value error, ")


def keys_at(loc: tuple) -> list[str]:
    """The keys params.yaml allows in the section at `loc` (e.g. `("tune", "asha")`); empty when not a section."""
    node: Any = Params
    for part in loc:
        if get_origin(node) is dict:
            node = get_args(node)[1]
        elif isinstance(node, type) and issubclass(node, BaseModel):
            field = next((f for n, f in node.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            node = field.annotation
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or n for n, f in node.model_fields.items()]
    return []

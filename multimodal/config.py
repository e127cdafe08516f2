"""Typed view of ``params.yaml``: validated once, at the edge, with every problem reported in one error.

Stages call :func:`load_params` and pass the resulting objects down; nothing below re-reads the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails

from multimodal.checkpoints import is_hub
# Re-exported: the rest of the library reads every params model from here.
from multimodal.params_base import Strict, did_you_mean, keyed, params_error  # noqa: F401
from multimodal.tune_params import (FUSIONS, NESTED_KNOBS, SEARCH_KINDS, SEARCHED_ONLY, SELECTION_METRICS,  # noqa: F401
                                    SELECTION_MODES, STRATEGIES, Asha, TrainFixed, Tune, with_searched)


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
    report: Path  # the report stage's one self-contained HTML file


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


class DemoClip(Strict):
    """The demo's moving-digit clips (multimodal.demo_video.write_moving_digit_clip)."""

    frames: int = Field(ge=2)
    size: int = Field(ge=28)  # px, square; at least a whole 28 px digit
    noise: float = Field(ge=0)  # std of pixel noise per frame (0-1 scale)
    blur: float = Field(ge=0)  # Gaussian blur of the digit, px
    occluder: int = Field(ge=0)  # side of the still grey square the digit passes behind, px


class Demo(Strict):
    """The embedded demo dataset (stage `demo`, multimodal.demo_dataset)."""

    n_samples: int = Field(ge=30)
    image_components: int = Field(ge=1, le=784)
    image_noise: float = Field(ge=0)
    audio_snr_db: tuple[float, float]
    missing_rate: float = Field(ge=0, lt=0.34)
    sample_rate: int
    speakers: int = Field(ge=3)  # synthetic speakers, the demo's groups (multimodal.demo_speakers)
    modalities: list[str] = Field(min_length=1)  # which of the demo's modalities to write (checked by demo_dataset)
    clip: DemoClip  # the opt-in moving-digit clips (multimodal.demo_video)


class Ingest(Strict):
    # The folder holding the manifest and every file it names: a DVC dependency of `ingest` as a whole, so any
    # file changed, added or removed there re-runs it. The demo's is `base.paths.demo`.
    dataset: Path
    manifest: str = Field(min_length=1)  # CSV or Parquet, a path inside `dataset`
    max_rows: int = Field(ge=1)  # a longer manifest is refused, having read no more than this many rows
    split: Split
    # With a given `split` column: the share of train rows (whole groups) moved to val; None keeps the split.
    carve_val_groups: float | None = Field(gt=0, lt=1)


class Validate(Strict):
    """Thresholds of the validate stage's checks and what to do with rows that fail them (docs/data.md)."""

    on_invalid: Literal["fail", "quarantine"]
    max_listed: int = Field(ge=1)  # failing rows named in the error message before "... and N more"
    docs_dir: Path  # Data Docs HTML (kept apart from paths.validated: not deterministic)
    labels: list[str] | None  # None: the train split's labels
    unique_content: bool  # the same file bytes under two sample ids is an error
    max_file_mb: float = Field(gt=0)  # a file's size is checked before a byte of it is read
    # {modality: its checks' thresholds}, each section checked by the modality's `Modality.checks` model.
    modalities: dict[str, Any]

    @field_validator("labels")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("an empty list; use null to allow any label")
        return value

    @field_validator("modalities", mode="wrap")
    @classmethod
    def _by_modality(cls, value: Any, handler: Any) -> dict[str, Any]:
        return keyed(value, "checks")


class Preprocess(Strict):
    batch_size: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    modalities: list[str]

    @field_validator("modalities")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from multimodal.modalities import names

        unknown = sorted(set(value) - set(names()))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {names()}")
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
    module: str | None = None  # a modality of the user's: the module defining its MODALITY (multimodal.modalities)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def names_hub(self) -> bool:
        """Whether this section loads anything from the Hugging Face hub (then the hub may be online)."""
        return any(is_hub(v) for v in (self.pretrained, *self.options.values()))


MODALITY_KEYS = ("pretrained", "revision", "config", "module")  # every modality section has these, beside its options


class Align(Strict):
    dim: int = Field(ge=2)
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    temperature: float = Field(gt=0)
    weight_decay: float = Field(ge=0)  # AdamW
    freeze: list[str]


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


class Report(Strict):
    """The offline report and its model card (multimodal.report): what only a person can say about the model."""

    title: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    limitations: list[str]  # known limits the figures cannot show; the report adds the measured ones
    max_rows: int = Field(ge=1)  # rows of a long table (failing rows, trials) shown before "... and N more"


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
    report: Report

    @model_validator(mode="before")
    @classmethod
    def _plugins_first(cls, raw: Any) -> Any:
        """Modules named by `modalities.<name>.module` are registered before any section is checked by them."""
        from multimodal.modalities import register_plugins

        if isinstance(raw, dict) and (errors := register_plugins(raw.get("modalities"))):
            raise ValidationError.from_exception_data("modalities", [{**e, "loc": ("modalities", *e["loc"])}
                                                                      for e in errors])
        return raw

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
        from multimodal.modalities import get_modality, names

        unknown_frozen = [m for m in self.align.freeze if m not in names()]
        if unknown_frozen:
            problems.append(f"align.freeze names unknown modalities {unknown_frozen}; known: {names()}")
        fixed = self.tune.fixed
        for m in (m for m in self.preprocess.modalities if m in names()):
            if get_modality(m).augment is not None and m not in fixed.augment:
                problems.append(f"tune.fixed.augment.{m}: missing (its augmentation knobs; zeros turn it off)")
            if get_modality(m).normalizations and m not in fixed.input_norm:
                problems.append(f"tune.fixed.input_norm.{m}: missing; one of "
                                f"{['none', *get_modality(m).normalizations]}")
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


# Params sections keyed by modality, each entry checked by a model its modality module declares (`Modality.<attr>`).
BY_MODALITY = {("validate", "modalities"): "checks", ("tune", "fixed", "augment"): "augment_knobs"}


def keys_at(loc: tuple) -> list[str]:
    """The keys params.yaml allows in the section at `loc` (e.g. `("tune", "asha")`); empty when not a section."""
    node: Any = Params
    for i, part in enumerate(loc):
        if (model_of := BY_MODALITY.get(tuple(loc[:i]))) is not None:  # a section a modality module declares
            from multimodal.modalities import registry

            node = getattr(registry()[part], model_of) if part in registry() else None
        elif get_origin(node) is dict:
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


__all__ = ["FUSIONS", "NESTED_KNOBS", "SEARCHED_ONLY", "SEARCH_KINDS", "SELECTION_METRICS", "SELECTION_MODES",
           "STRATEGIES", "Align", "Asha", "Base", "Baseline", "Demo", "DemoClip", "Evaluate", "Ingest", "MODALITY_KEYS",
           "ModalitySpec", "Params", "ParamsError", "Paths", "Preprocess", "Split", "Strict", "TrainFixed", "Tune",
           "Validate", "did_you_mean", "keyed", "keys_at", "load_params", "params_error", "with_searched"]

"""The `baseline` and `evaluate` params sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, field_validator

from multimodal.pipeline.params import Strict


class Baseline(Strict):
    """The classical baseline (multimodal.evaluation.baseline): logistic regression on standard features per
    modality."""

    c_grid: list[PositiveFloat] = Field(min_length=1)  # LogisticRegression C values; val picks one per model
    max_iter: int = Field(ge=1)
    image_size: int = Field(ge=1)  # pixel_values average-pooled to at most this side
    n_mfcc: int = Field(ge=1)  # MFCCs of the log-mel, as mean and std over frames
    max_tokens: int = Field(ge=1)  # TF-IDF vocabulary: the token ids in most train texts


class Efficiency(Strict):
    """Latency, throughput and peak memory of the saved models (multimodal.evaluation.efficiency): a report, not a
    metric."""

    batch_sizes: list[int] = Field(min_length=1)
    warmup: int = Field(ge=0)  # untimed forward passes before the timed ones
    repeats: int = Field(ge=1)  # timed forward passes per batch size; the median counts


class Explain(Strict):
    """The test rows the report explains (multimodal.evaluation.explanations): inputs, contributions, attributions."""

    rows: int = Field(ge=0)  # rows explained, half right and half wrong where the fused model has both; 0: none
    steps: int = Field(ge=1)  # Integrated Gradients: points on the path from the reference to the input


class Evaluate(Strict):
    batch_size: int = Field(ge=1)
    bootstrap: int = Field(ge=100)  # resamples behind every 95% interval (seeded from base.seed)
    calibration_bins: int = Field(ge=1)  # equal-width confidence bins of the ECE and the reliability diagram
    # Noise robustness curves: {modality: {kind: levels}}, a kind being a function of the modality module's
    # CORRUPTIONS; every list starts at 0, the clean input.
    corruptions: dict[str, dict[str, list[float]]]
    efficiency: Efficiency
    explain: Explain

    @field_validator("corruptions")
    @classmethod
    def _levels_from_clean(cls, corruptions: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        problems = [f"evaluate.corruptions.{m}.{kind}: {levels} must start at 0 (the clean input) and increase"
                    for m, kinds in corruptions.items() for kind, levels in kinds.items()
                    if not levels or levels[0] != 0 or any(b <= a for a, b in zip(levels, levels[1:]))]
        if problems:
            raise ValueError("; ".join(problems))
        return corruptions


class Ensemble(Strict):
    """Ensemble selection on validation (multimodal.evaluation.ensemble)."""

    metric: Literal["log_likelihood", "accuracy"]  # what each greedy round maximises on validation rows
    rounds: int = Field(ge=1)  # greedy rounds; a member's weight is its count / the kept rounds
    members: list[Literal["trials", "unimodal", "classical"]]  # candidates beside the fused best model
    batch_size: int = Field(ge=1)  # rows per forward pass of a deep member

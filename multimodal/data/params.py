"""The `ingest` and `validate` params sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from multimodal.modalities.params import PLUGINS, ValidateSections
from multimodal.pipeline.params import Schema, Strict


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
    modalities: ValidateSections

    @field_validator("labels")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("an empty list; use null to allow any label")
        return value


INGEST = Schema({"ingest": Ingest}) | PLUGINS
VALIDATE = Schema({"validate": Validate}) | PLUGINS

"""The `report` params section: what only a person can say about the model."""

from __future__ import annotations

from pydantic import Field

from multimodal.pipeline.params import Strict


class Report(Strict):
    """The offline report and its model card (multimodal.reporting.report): what only a person can say about the
    model."""

    title: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    limitations: list[str]  # known limits the figures cannot show; the report adds the measured ones
    max_rows: int = Field(ge=1)  # rows of a long table (failing rows, trials) shown before "... and N more"

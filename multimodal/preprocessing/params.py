"""The `preprocess` params section."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from multimodal.modalities.params import ModalityNames
from multimodal.pipeline.params import Strict


class Preprocess(Strict):
    batch_size: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    modalities: Annotated[ModalityNames, Field(min_length=1)]  # at least one

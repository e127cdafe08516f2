"""The `align` params section."""

from __future__ import annotations

from pydantic import Field

from multimodal.modalities.params import ModalityNames
from multimodal.pipeline.params import Strict


class Align(Strict):
    dim: int = Field(ge=2)
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    temperature: float = Field(gt=0)
    weight_decay: float = Field(ge=0)  # AdamW
    freeze: ModalityNames

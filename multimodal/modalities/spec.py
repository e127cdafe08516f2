"""A `modalities.<name>` params section: the encoder and processor settings of one modality."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from multimodal.modalities.checkpoints import is_hub


class ModalitySpec(BaseModel):
    """Encoder + processor settings of one modality.

    `pretrained`: null (build from `config`), `minilm`, a local folder, or `hub:org/name` with `revision` (the one
    optional key: present exactly beside a hub id). Other keys are the modality's own options, declared by its
    module (`Modality.options`); the params check refuses unknown ones and requires every declared one.
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

"""Every modality has the same small contract (see `base.Modality`); this registry maps names to them.

Adding a modality (video, tabular, ...) means one new module here plus its `modalities:` section in params.
"""

from __future__ import annotations

from multimodal.modalities.audio import AUDIO
from multimodal.modalities.base import Modality, PooledEncoder, resolve_pretrained
from multimodal.modalities.image import IMAGE
from multimodal.modalities.text import TEXT

REGISTRY: dict[str, Modality] = {m.name: m for m in (IMAGE, AUDIO, TEXT)}


def get_modality(name: str) -> Modality:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "Modality", "PooledEncoder", "get_modality", "resolve_pretrained"]

"""Every modality has the same small contract (see `base.Modality`); this registry maps names to them.

Adding a modality (video, tabular, ...) means one new module here plus its `modalities:` section in params.
"""

from __future__ import annotations

from multimodal.modalities.audio import AUDIO
from multimodal.modalities.base import InputNorm, Modality, PooledEncoder, resolve_pretrained
from multimodal.modalities.image import IMAGE
from multimodal.modalities.text import TEXT

REGISTRY: dict[str, Modality] = {m.name: m for m in (IMAGE, AUDIO, TEXT)}


def get_modality(name: str) -> Modality:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {sorted(REGISTRY)}") from None


def input_norm(modality: str, kind: str) -> InputNorm | None:
    """The named input normalisation of `modality` (`tune.fixed.input_norm`); None for `none`."""
    if kind == "none":
        return None
    known = get_modality(modality).normalizations
    if kind not in known:
        raise ValueError(f"input_norm.{modality}: unknown normalisation {kind!r}; known: {['none', *known]}")
    return InputNorm(kind, known[kind])


def set_input_norm(encoder: PooledEncoder, modality: str, kind: str) -> None:
    if not isinstance(encoder, PooledEncoder):  # e.g. FeatureInput: normalised when `align` cached the features
        raise ValueError(f"input_norm.{modality}: the model reads {modality} as cached features, it has no encoder "
                         "to normalise the inputs of")
    encoder.input_norm = input_norm(modality, kind)


def input_norm_of(encoder: PooledEncoder) -> str:
    return encoder.input_norm.kind if encoder.input_norm is not None else "none"


__all__ = ["REGISTRY", "InputNorm", "Modality", "PooledEncoder", "get_modality", "input_norm", "input_norm_of",
           "resolve_pretrained", "set_input_norm"]

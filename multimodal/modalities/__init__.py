"""Every modality has the same small contract (see `base.Modality`); this registry maps names to them.

Adding a modality (video, tabular, ...) means one new module here plus its `modalities:` section in params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_core import InitErrorDetails

from multimodal.checkpoints import checkpoint_problem, revision_problem
from multimodal.config import MODALITY_KEYS, ModalitySpec, did_you_mean, params_error
from multimodal.modalities.audio import AUDIO
from multimodal.modalities.base import InputNorm, Modality, PooledEncoder, load_pretrained
from multimodal.modalities.image import IMAGE
from multimodal.modalities.text import TEXT

REGISTRY: dict[str, Modality] = {m.name: m for m in (IMAGE, AUDIO, TEXT)}


def get_modality(name: str) -> Modality:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {sorted(REGISTRY)}") from None


def section_errors(name: str, options: dict[str, Any], spec: ModalitySpec | None, root: Path) -> list[InitErrorDetails]:
    """Problems of params `modalities.<name>`, each at its key: an unknown modality or key (with the closest valid
    names) and a declared option left out, from the section's `options` (its keys beside pretrained/revision/
    config); given the validated `spec` also a checkpoint name that is no local folder (under `root`), `minilm` or
    `hub:` id, and a `revision` missing beside a hub id or given without one."""
    if name not in REGISTRY:
        return [params_error((name,), f"unknown modality{did_you_mean(name, list(REGISTRY))}", name)]
    modality = REGISTRY[name]
    errors = [params_error((name, key), f"unknown key{did_you_mean(key, [*MODALITY_KEYS, *modality.options])}", value)
              for key, value in options.items() if key not in modality.options]
    errors += [InitErrorDetails(type="missing", loc=(name, key), input=options)
               for key in modality.options if key not in options]
    if spec is None:
        return errors
    names = {"pretrained": spec.pretrained} if spec.pretrained is not None else {}
    names |= {key: spec.options[key] for key in modality.checkpoints if key in spec.options}
    errors += [params_error((name, key), problem, value) for key, value in names.items()
               if (problem := checkpoint_problem(value, root))]
    if problem := revision_problem(list(names.values()), spec.revision):
        errors.append(params_error((name, "revision"), problem, spec.revision))
    return errors


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
           "load_pretrained", "section_errors", "set_input_norm"]

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
from multimodal.modalities.base import Modality, PooledEncoder, load_pretrained
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


__all__ = ["REGISTRY", "Modality", "PooledEncoder", "get_modality", "load_pretrained", "section_errors"]

"""Params types that need the modality registry: the `modalities` sections, lists of modality names, sections keyed
by modality (each checked by a model its module declares), and the rules tying them to `preprocess.modalities`.

Every validator here first registers the modalities of the user's that params name (`modalities.<m>.module`), from
the whole raw params `multimodal.pipeline.params` passes as validation context.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError, ValidationInfo, WrapValidator
from pydantic_core import InitErrorDetails

from multimodal.modalities import get_modality, keyed_sections, names, norm_errors, register_plugins, section_errors
from multimodal.modalities.spec import MODALITY_KEYS, ModalitySpec
from multimodal.pipeline.params import CrossCheck, Schema


def plugin_problems(raw: Mapping[str, Any]) -> list[str]:
    """Register the modules `modalities.<m>.module` of the raw params names; what failed, as `key: message`."""
    return [f"modalities.{'.'.join(map(str, e['loc']))}: {e['type'].message()}"
            for e in register_plugins(raw.get("modalities"))]


def _plugins(info: ValidationInfo) -> None:
    """Register the user's modalities before any modality name is looked up (a type checked on its own)."""
    if problems := plugin_problems((info.context or {}).get("raw") or {}):
        raise ValueError("; ".join(problems))


def _raise(errors: list[InitErrorDetails], title: str) -> None:
    if errors:
        raise ValidationError.from_exception_data(title, errors)


def _sections(value: Any, handler: Any, info: ValidationInfo) -> dict[str, ModalitySpec]:
    """The whole `modalities` mapping: each section's own checks and its modality's, all reported together."""
    _plugins(info)
    if not isinstance(value, dict):
        return handler(value)
    root = Path((info.context or {}).get("root", "."))
    sections, errors = {}, []
    for name, raw in value.items():
        section, problems = _one_section(str(name), raw, root)
        errors += problems
        if section is not None:
            sections[name] = section
    _raise(errors, "modalities")
    return sections


def _one_section(name: str, raw: Any, root: Path, loc: tuple[str, ...] | None = None
                 ) -> tuple[ModalitySpec | None, list[InitErrorDetails]]:
    loc = (name,) if loc is None else loc
    section, errors = None, []
    try:
        section = ModalitySpec.model_validate(raw)
    except ValidationError as err:
        errors += [InitErrorDetails(type=e["type"], loc=(*loc, *e["loc"]), input=e["input"],
                                    **({"ctx": e["ctx"]} if "ctx" in e else {})) for e in err.errors()]
    options = dict(raw) if isinstance(raw, dict) else {}
    options = {k: v for k, v in options.items() if k not in MODALITY_KEYS}
    errors += [{**e, "loc": (*loc, *e["loc"][1:])} for e in section_errors(name, options, section, root)]
    return section, errors


def _section(value: Any, handler: Any, info: ValidationInfo) -> ModalitySpec:
    """One `modalities.<m>` section (a stage reading one modality's, `preprocess@<m>`); the name is the key's."""
    _plugins(info)
    name = str((info.context or {}).get("key", "")).rpartition(".")[2]
    section, errors = _one_section(name, value, Path((info.context or {}).get("root", ".")), loc=())
    _raise(errors, f"modalities.{name}")
    return section


def _known(value: list[str], info: ValidationInfo) -> list[str]:
    _plugins(info)
    unknown = sorted(set(value) - set(names()))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; known: {names()}")
    return value


def _keyed(model_of: str):
    def validate(value: Any, handler: Any, info: ValidationInfo) -> dict[str, Any]:
        _plugins(info)
        sections, errors = keyed_sections(value, model_of)
        _raise(errors, model_of)
        return sections

    return validate


def _norms(value: Any, handler: Any, info: ValidationInfo) -> dict[str, str]:
    _plugins(info)
    _raise(norm_errors(value), "input_norm")
    return dict(value)


# `modalities.<m>`: one section (a stage reading one modality's); its name comes from the key being checked.
ModalitySection = Annotated[Any, WrapValidator(_section)]
# `modalities`: {name: ModalitySpec}, each checked by its modality (keys, checkpoint names), all reported together.
ModalitySections = Annotated[dict[str, ModalitySection], WrapValidator(_sections)]
# A list of registered modality names (`preprocess.modalities`, `align.freeze`).
ModalityNames = Annotated[list[str], AfterValidator(_known)]
# {modality: section} checked by the modality module's model of that name (`checks`: `validate.modalities`).
ValidateSections = Annotated[dict[str, Any], WrapValidator(_keyed("checks"))]
# `tune.fixed.augment`: {modality: knobs} checked by the module's `augment_knobs` model; kept as plain dicts.
AugmentKnobs = Annotated[dict[str, Any], WrapValidator(_keyed("augment_knobs")),
                         AfterValidator(lambda v: {m: dict(k) if isinstance(k, dict) else k.model_dump()
                                                   for m, k in v.items()})]
# `tune.fixed.input_norm`: {modality: normalisation}, `none` or one the module declares.
InputNorms = Annotated[dict[str, str], WrapValidator(_norms)]


def _listed_have_sections(params: Any) -> list[str]:
    missing = [m for m in params.preprocess.modalities if m not in params.modalities]
    return [f"preprocess.modalities: lists {missing} but `modalities:` has no section for them"] if missing else []


def _norms_for_listed(params: Any) -> list[str]:
    return [f"tune.fixed.input_norm.{m}: missing; one of {['none', *get_modality(m).normalizations]}"
            for m in params.preprocess.modalities
            if get_modality(m).normalizations and m not in params.tune.fixed.input_norm]


def _augment_for_listed(params: Any) -> list[str]:
    return [f"tune.fixed.augment.{m}: missing (its augmentation knobs; zeros turn it off)"
            for m in params.preprocess.modalities
            if get_modality(m).augment is not None and m not in params.tune.fixed.augment]


LISTED_HAVE_SECTIONS = CrossCheck(("preprocess.modalities", "modalities"), _listed_have_sections)
NORMS_FOR_LISTED = CrossCheck(("preprocess.modalities", "tune.fixed.input_norm"), _norms_for_listed)
AUGMENT_FOR_LISTED = CrossCheck(("preprocess.modalities", "tune.fixed.augment"), _augment_for_listed)

# Every stage that reads a manifest or a modality's section registers the user's modalities first: a manifest column
# of one is unknown otherwise (ingest reads no `modalities` key, yet must know the column).
PLUGINS = Schema({}, prepare=(plugin_problems,))
# The types of the keys that several stages read; a stage's own section types come from its package.
MODALITIES = Schema({"modalities": ModalitySections}, (LISTED_HAVE_SECTIONS,)) | PLUGINS
LISTED = Schema({"preprocess.modalities": ModalityNames}) | PLUGINS
INPUT_NORM = Schema({"tune.fixed.input_norm": InputNorms}, (NORMS_FOR_LISTED,)) | PLUGINS


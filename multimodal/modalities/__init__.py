"""The registry of modalities: every module in this package that defines `MODALITY` (a `base.Modality`), plus
modules a params section names with `module:` (a modality brought by the user, importable from the project root).

Adding a modality (video, tabular, ...) means one new module here plus its params sections (`modalities.<name>`,
`validate.modalities.<name>`, and `tune.fixed.augment.<name>` / `input_norm.<name>` if it has those); nothing
outside the module names it. README, "Add a modality". Beside the modality modules: `spec` and `params` (the
params types that need this registry), `checks` and `transforms` (what a module's checks and augmentation are
built from), `checkpoints` (what a `pretrained` name may be).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from multimodal.modalities.base import InputNorm, Modality, PooledEncoder, load_pretrained
from multimodal.modalities.checkpoints import checkpoint_problem, revision_problem
from multimodal.modalities.spec import MODALITY_KEYS, ModalitySpec
from multimodal.pipeline.params import did_you_mean, keys_at, params_error

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage")

_BUILT_IN: dict[str, Modality] = {}
_PLUGINS: dict[str, Modality] = {}
# Built-in modules whose third-party package is not installed (video without PyAV): unavailable, not fatal.
_MISSING: dict[str, ModuleNotFoundError] = {}


def _built_in() -> dict[str, Modality]:
    """The modules of this package that define `MODALITY`, imported once, in name order."""
    if not _BUILT_IN:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            try:
                module = importlib.import_module(f"{__name__}.{info.name}")
            except ModuleNotFoundError as err:
                if (err.name or "").split(".")[0] in ("multimodal", "stages", "flows"):
                    raise  # our own code is broken: never hide that
                _MISSING[info.name] = err
                continue
            modality = getattr(module, "MODALITY", None)
            if isinstance(modality, Modality):
                _BUILT_IN[modality.name] = modality
    return _BUILT_IN


def registry() -> dict[str, Modality]:
    return {**_built_in(), **_PLUGINS}


def register_module(name: str, module: str) -> Modality:
    """Import `module` (a dotted name) and register its `MODALITY`, which must be called `name`."""
    try:
        found = getattr(importlib.import_module(module), "MODALITY", None)
    except ImportError as err:
        raise ValueError(f"cannot import module {module!r}: {err}") from None
    if not isinstance(found, Modality):
        raise ValueError(f"module {module!r} defines no MODALITY (a multimodal.modalities.base.Modality)")
    if found.name != name:
        raise ValueError(f"module {module!r} defines modality {found.name!r}, not {name!r}")
    if name in _built_in() and _built_in()[name] is not found:
        raise ValueError(f"{name!r} is a built-in modality; give yours another name")
    _PLUGINS[name] = found
    return found


def get_modality(name: str) -> Modality:
    known = registry()
    try:
        return known[name]
    except KeyError:
        if name in _MISSING:
            raise KeyError(f"modality {name!r} needs the package {_MISSING[name].name!r}, which is not installed "
                           f"({_MISSING[name]}); install requirements.lock") from None
        raise KeyError(f"unknown modality {name!r}; known: {sorted(known)}") from None


def names() -> list[str]:
    return list(registry())


def register_plugins(sections: Any) -> list[InitErrorDetails]:
    """Register the modules named by `modalities.<name>.module` in raw params; problems as params errors."""
    errors = []
    for name, raw in (sections or {}).items() if isinstance(sections, Mapping) else ():
        module = raw.get("module") if isinstance(raw, Mapping) else None
        if module is not None:
            try:
                register_module(str(name), str(module))
            except ValueError as err:
                errors.append(params_error((str(name), "module"), str(err), module))
    return errors


def section_errors(name: str, options: dict[str, Any], spec: ModalitySpec | None, root: Path) -> list[InitErrorDetails]:
    """Problems of params `modalities.<name>`, each at its key: an unknown modality or key (with the closest valid
    names) and a declared option left out, from the section's `options` (its keys beside pretrained/revision/
    config/module); given the validated `spec` also a checkpoint name that is no local folder (under `root`),
    `minilm` or `hub:` id, and a `revision` missing beside a hub id or given without one."""
    known = registry()
    if name in _MISSING:
        return []  # its package is not installed here: its sections cannot be checked, and nothing may use it
    if name not in known:
        return [params_error((name,), f"unknown modality{did_you_mean(name, list(known))}", name)]
    modality = known[name]
    errors = [params_error((name, key), f"unknown key{did_you_mean(key, [*MODALITY_KEYS, *modality.options])}", value)
              for key, value in options.items() if key not in modality.options]
    errors += [InitErrorDetails(type="missing", loc=(name, key), input=options)
               for key in modality.options if key not in options]
    if spec is None:
        return errors
    checked = named_checkpoints(modality, spec, every=True)
    errors += [params_error((name, key), problem, value) for key, value in checked.items()
               if (problem := checkpoint_problem(value, root))]
    if problem := revision_problem(list(checked.values()), spec.revision):
        errors.append(params_error((name, "revision"), problem, spec.revision))
    return errors


def named_checkpoints(modality: Modality, spec: ModalitySpec, *, every: bool = False) -> dict[str, Any]:
    """{key: checkpoint name} of `spec`: `pretrained` and the modality's own checkpoint options (`tokenizer`), those
    that name one (`every`: also the options given as null, which the params check refuses)."""
    named = {"pretrained": spec.pretrained} if spec.pretrained is not None else {}
    named |= {key: spec.options[key] for key in modality.checkpoints if key in spec.options}
    return named if every else {k: v for k, v in named.items() if v is not None}


def recorded_modality(name: str, module: str | None, where: str) -> Modality:
    """The modality `name` that a saved model (`where`) reads; a modality of the user's is imported from the module
    the model records (`modalities.<name>.module` when it was trained), or refused naming that module."""
    if name in registry() or module is None:
        try:
            return get_modality(name)
        except KeyError as err:
            raise ValueError(f"{where} reads modality {name!r}: {err.args[0]}") from None
    try:
        return register_module(name, module)
    except ValueError as err:
        raise ValueError(f"{where} reads modality {name!r}, defined by the module {module!r} (its "
                         f"`modalities.{name}.module` when it was trained), which cannot be used here: {err}. "
                         f"Install the package that provides {module!r}, or run from the folder that holds it") from None


def keyed_sections(value: Any, model_of: str) -> tuple[dict[str, BaseModel], list[InitErrorDetails]]:
    """A params mapping {modality: section} validated by each modality's own pydantic model (its attribute
    `model_of`: `checks`, `augment_knobs`); problems at their keys, e.g. `("audio", "min_duration_s")`."""
    if not isinstance(value, Mapping):
        return {}, [params_error((), f"expected a mapping of modality names to sections, got {value!r}", value)]
    known, out, errors = registry(), {}, []
    for name, section in value.items():
        if name in _MISSING:  # not installed here (see `section_errors`)
            out[name] = section
            continue
        model = getattr(known[name], model_of) if name in known else None
        if model is None:
            having = [m for m, mod in known.items() if getattr(mod, model_of) is not None]
            errors.append(params_error((str(name),), f"no such modality here{did_you_mean(str(name), having)}", name))
            continue
        try:
            out[name] = model.model_validate(section)
        except ValidationError as err:
            for e in err.errors():
                if e["type"] == "extra_forbidden":  # a typo: name the closest key of the modality's own model
                    valid = keys_at(model, e["loc"][:-1])
                    message = f"unknown key{did_you_mean(str(e['loc'][-1]), valid)}"
                    errors.append(params_error((name, *e["loc"]), message, e["input"]))
                    continue
                errors.append(InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"],
                                               **({"ctx": e["ctx"]} if "ctx" in e else {})))
    return out, errors


def norm_errors(value: Any) -> list[InitErrorDetails]:
    """Problems of `tune.fixed.input_norm`: {modality: name}, each name `none` or one of its normalizations."""
    if not isinstance(value, Mapping):
        return [params_error((), f"expected {{modality: normalisation}}, got {value!r}", value)]
    known, errors = registry(), []
    for name, kind in value.items():
        if name in _MISSING:
            continue
        if name not in known:
            errors.append(params_error((str(name),), f"unknown modality{did_you_mean(str(name), list(known))}", kind))
        elif kind not in ("none", *known[name].normalizations):
            errors.append(params_error((str(name),), f"unknown normalisation {kind!r}; known: "
                                                     f"{['none', *known[name].normalizations]}", kind))
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


def build_pooled_encoder(modality: str, spec: ModalitySpec) -> PooledEncoder:
    """The encoder of `modality` for `spec`, pooled, with the modality's input adapter."""
    mod = get_modality(modality)
    return PooledEncoder(mod.build_encoder(spec), mod.adapt_inputs)


def rebuild_pooled_encoder(modality: str, entry: dict[str, Any]) -> PooledEncoder:
    """The encoder again from a saved model's entry (`model.encoder_entry`): the HF config, or the modality's own."""
    from transformers import AutoConfig, AutoModel

    mod = get_modality(modality)
    if mod.rebuild_encoder is not None:
        return PooledEncoder(mod.rebuild_encoder(entry), mod.adapt_inputs)
    config = dict(entry["hf_config"])
    return PooledEncoder(AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)),
                         mod.adapt_inputs)


__all__ = ["InputNorm", "Modality", "PooledEncoder", "build_pooled_encoder", "get_modality", "input_norm",
           "input_norm_of", "keyed_sections", "load_pretrained", "named_checkpoints", "names", "norm_errors",
           "rebuild_pooled_encoder", "recorded_modality", "register_module", "register_plugins", "registry",
           "section_errors", "set_input_norm"]

"""Params: each stage validates exactly the keys it declares, with every problem reported in one error.

Each package owns the models of its params sections (`multimodal/<package>/params.py`); a stage declares the keys
it reads in `dvc.yaml` and gives their types in a `Schema` (`stages/<name>.py`, `PARAMS`). `load_params` checks
those keys and nothing else, so a stage's code depends only on the schemas of what it reads: editing the search
space's schema re-runs `tune`, not the stages before it. A typo is refused, with the key and the closest valid
name, by the first stage that reads its section. The result is a read-only view (`multimodal.pipeline.stage_params`)
that lets the stage read only what it declared.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from multimodal.pipeline.stage_deps import missing_inputs
from multimodal.pipeline.stage_params import ALWAYS_READABLE, Section, StageParams, declared_params


# No field of a params model has a default: params.yaml is the one place a knob's value lives, so a missing key is
# an error naming it (tests/unit/pipeline/test_params.py keeps it that way).
class Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them (load_params suggests the closest name).
    model_config = ConfigDict(extra="forbid", frozen=True)


def did_you_mean(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """`; did you mean X?` with the closest valid names, else the list of valid names."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid: {sorted(valid)}"


def params_error(loc: tuple[str, ...], message: str, value: Any) -> InitErrorDetails:
    """One problem at `loc`, for a validator that reports several at once (`ValidationError.from_exception_data`)."""
    return InitErrorDetails(type=PydanticCustomError("params", message), loc=loc, input=value)


class Paths(Strict):
    demo: Path
    raw: Path
    validated: Path
    preprocessed: Path
    aligned: Path
    models: Path
    ensemble: Path  # the ensemble stage's model: ensemble.json naming members under `models` and `baseline`
    compressed: Path  # the compress stage's variants of models/best
    baseline: Path
    metrics: Path
    plots: Path
    report: Path  # the report stage's one self-contained HTML file


class Base(Strict):
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    paths: Paths


class ParamsError(ValueError):
    """Every problem found in params.yaml, one per line."""


@dataclass(frozen=True)
class CrossCheck:
    """A rule over several keys (`preprocess.modalities` and `modalities`): it runs for a stage that loads all of
    `keys`, on the loaded view, and returns its problems as `key: message` lines."""

    keys: tuple[str, ...]
    run: Callable[[Any], list[str]]


@dataclass(frozen=True)
class Schema:
    """What a stage's params are: the type of each key it reads (a section such as `tune`, or a key inside one such
    as `tune.fixed.input_norm`), the rules spanning keys, and steps run on the raw params before any key is checked
    (`prepare`: registering the user's modality modules). `a | b` merges two."""

    types: Mapping[str, Any]
    checks: tuple[CrossCheck, ...] = field(default=())
    prepare: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = field(default=())

    def __or__(self, other: Schema) -> Schema:
        return Schema({**self.types, **other.types}, (*self.checks, *other.checks),
                      tuple(dict.fromkeys((*self.prepare, *other.prepare))))


def _field_type(model: type[BaseModel], name: str) -> Any:
    """The type of field `name` (or its alias) of `model`, its constraints (`Field(ge=1)`) included."""
    found = next((f for n, f in model.model_fields.items() if name in (n, f.alias)), None)
    if found is None:
        raise KeyError(name)
    return Annotated[found.annotation, *found.metadata] if found.metadata else found.annotation


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def type_at(types: Mapping[str, Any], key: str) -> Any:
    """The type of dotted `key`: the deepest schema entry at or above it, then the model fields below that."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:depth])) in types:
            tp = types[prefix]
            for part in parts[depth:]:
                inner = _unwrap(tp)
                if get_origin(inner) is dict:
                    tp = get_args(inner)[1]
                elif isinstance(inner, type) and issubclass(inner, BaseModel):
                    tp = _field_type(inner, part)
                else:
                    raise KeyError(key)
            return tp
    raise KeyError(key)


def keys_at(tp: Any, loc: tuple) -> list[str]:
    """The keys allowed in the section at `loc` below type `tp` (e.g. `("asha",)` below `Tune`); empty if none."""
    node = tp
    for part in loc:
        inner = _unwrap(node)
        if get_origin(inner) is dict:
            node = get_args(inner)[1]
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            try:
                node = _field_type(inner, str(part))
            except KeyError:
                return []
        else:
            return []
    inner = _unwrap(node)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return [f.alias or n for n, f in inner.model_fields.items()]
    return []


def _typo_of(raw: Mapping[str, Any], key: str) -> str:
    """` (a typo? params.yaml has X)` when a key beside the missing one is close to its name."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return ""
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            return f" (a typo? params.yaml has {close[0]} there)" if close else ""
        node = node[part]
    return ""


def _raw_at(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


class _Node(dict):
    """A section of the loaded tree, as opposed to a validated value that happens to be a dict."""


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, _Node())
    tree[leaf] = value


def _sections(tree: dict[str, Any]) -> Section:
    return Section({k: _sections(v) if isinstance(v, _Node) else v for k, v in tree.items()})


def _message(tp: Any, error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key{did_you_mean(str(error['loc'][-1]), keys_at(tp, error['loc'][:-1]))}"
    return error["msg"].removeprefix("Value error, ")


def validate_params(raw: Mapping[str, Any], keys: tuple[str, ...], schema: Schema, *, root: Path = Path("."),
                    where: str = "params.yaml", whole: bool = False) -> Section:
    """`keys` of the raw params, each validated by its type in `schema`, then the cross-key checks they allow.

    `root` is the folder of params.yaml (local checkpoint folders are relative to it); the whole raw params reach
    every validator as context (a modality of the user's, `modalities.<m>.module`, is registered from there).
    `whole`: `schema` types every section, so a top-level key it lacks is refused too (`stages.check_params`).
    """
    keys = tuple(dict.fromkeys((*keys, *ALWAYS_READABLE)))
    keys = tuple(k for k in keys if not any(k.startswith(other + ".") for other in keys))  # a section holds its keys
    types = {"base.paths": Paths, **schema.types}
    tree: dict[str, Any] = _Node()
    problems = [f"  {line}" for step in schema.prepare for line in step(raw)]
    if whole:  # every section of the file: one that no schema types is a typo (or a leftover)
        sections = sorted({k.split(".")[0] for k in types})
        problems += [f"  {k}: unknown key{did_you_mean(str(k), sections)}" for k in raw if k not in sections]
    for key in keys:
        try:
            tp = type_at(types, key)
        except KeyError:
            raise ParamsError(f"{where}: the code reading {key!r} gives no type for it (its stage's Schema)") from None
        try:
            value = _raw_at(raw, key)
        except KeyError:
            problems.append(f"  {key}: missing{_typo_of(raw, key)}")
            continue
        try:
            _put(tree, key, TypeAdapter(tp).validate_python(value, context={"root": root, "raw": raw, "key": key}))
        except ValidationError as err:
            problems += [f"  {'.'.join([key, *map(str, e['loc'])])}: {_message(tp, e)}" for e in err.errors()]
    loaded = _sections(tree)
    if not problems:
        for check in schema.checks:
            if all(any(k == d or k.startswith(d + ".") for d in keys) for k in check.keys):
                problems += [f"  {line}" for line in check.run(loaded)]
    if problems:
        raise ParamsError(f"{where} has {len(problems)} problem(s):\n" + "\n".join(problems))
    return loaded


def read_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"cannot read {path}: {err}") from err


def load_params(path: str | Path = "params.yaml", *, stage: str, schema: Schema) -> StageParams:
    """The params `stage` (a `dvc.yaml` stage name such as `preprocess@image`) declares, validated by `schema`;
    reading any other key is an error (`UndeclaredParam`). Raises ParamsError listing every problem at once."""
    path = Path(path)
    return stage_params(read_raw(path), stage=stage, schema=schema, dvc_yaml=path.with_name("dvc.yaml"),
                        root=path.parent, where=str(path))


def stage_params(raw: Mapping[str, Any], *, stage: str, schema: Schema, dvc_yaml: str | Path = "dvc.yaml",
                 root: Path = Path("."), where: str = "params.yaml") -> StageParams:
    """`load_params` of params already read (`raw`): what a Ray trial does with the params its driver loaded."""
    keys = declared_params(stage, dvc_yaml)
    loaded = validate_params(raw, keys, schema, root=root, where=where)
    # What params name beside code and data (a modality module, a checkpoint folder) must be a dep too, or DVC
    # would not re-run the stage when it changes (`multimodal.pipeline.params_inputs`).
    if missing := missing_inputs(root, stage, Path(dvc_yaml), dict(raw)):
        raise ParamsError(f"{dvc_yaml}: stage {stage!r} loads inputs that {where} names but its `deps:` lack, so DVC "
                          "would not re-run it when they change:\n" + "\n".join(f"  {m}" for m in missing)
                          + "\nrun `python -m multimodal.pipeline.stage_deps --write` to add them")
    # The whole file travels with the view: a trial checks the same keys again, after the same `prepare` steps
    # (which read beyond them: the user's modality modules).
    return StageParams(loaded, stage, (*keys, *ALWAYS_READABLE), raw=dict(raw))


def load_keys(path: str | Path, schema: Schema, keys: tuple[str, ...] | None = None, *, whole: bool = False
              ) -> Section:
    """`keys` (default: every key `schema` types), validated, for a command that is no DVC stage
    (`stages.compare`, the flow's artifacts, `stages.check_params` with `whole`)."""
    path = Path(path)
    return validate_params(read_raw(path), keys or tuple(schema.types), schema, root=path.parent, where=str(path),
                           whole=whole)

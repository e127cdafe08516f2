"""What `dvc.yaml` declares for each stage, and a params view that lets a stage read only what it declares.

DVC re-runs a stage when a declared dependency changes; a params key the code reads but `dvc.yaml` does not list
would leave a stale cache. So a stage does not get the whole params object: it gets a `StageParams` view,
which raises `UndeclaredParam` the moment it reads a key outside its `params:` list (`multimodal.pipeline.params`
loads only the declared keys; the view names the stage and the key when code reads another). The class of bug cannot
come back silently: the first run (every test of the tiny pipeline) fails and names the key.

`base.paths` is always readable: those paths are templated into `deps`/`outs`, which DVC already tracks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ALWAYS_READABLE = ("base.paths",)
_REF = re.compile(r"\$\{\s*([A-Za-z0-9_.@-]+)\s*\}")


class UndeclaredParam(RuntimeError):
    """A stage read a params key that its `dvc.yaml` entry does not declare (not an AttributeError on purpose:
    `getattr(obj, name, default)` must not swallow it)."""


@dataclass(frozen=True)
class StageDecl:
    """One stage of `dvc.yaml` after templating: `preprocess@image`, its command, deps and params keys."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]


def _lookup(context: Mapping[str, Any], dotted: str) -> Any:
    node: Any = context
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"dvc.yaml refers to ${{{dotted}}}, which params.yaml does not define")
        node = node[part]
    return node


def _render(value: Any, context: Mapping[str, Any]) -> Any:
    """DVC-style `${a.b}` templating: a string that is one reference becomes the value itself (lists too)."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:
            return _lookup(context, whole.group(1))
        return _REF.sub(lambda m: str(_lookup(context, m.group(1))), value)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {_render(k, context): _render(v, context) for k, v in value.items()}
    return value


def _entries(items: list[Any] | None, where: str) -> tuple[str, ...]:
    """`deps`/`params` entries as strings; the `{file: [keys]}` form is not used in this project."""
    out = []
    for item in items or []:
        if not isinstance(item, str):
            raise ValueError(f"{where}: only plain entries are supported here, got {item!r}")
        out.append(item)
    return tuple(out)


def read_stages(dvc_yaml: str | Path = "dvc.yaml", params_yaml: str | Path | None = None) -> dict[str, StageDecl]:
    """Every stage of `dvc_yaml`, `foreach` expanded (`preprocess@image`), templated from `params_yaml`."""
    dvc_yaml = Path(dvc_yaml)
    params_yaml = Path(params_yaml) if params_yaml else dvc_yaml.with_name("params.yaml")
    context = yaml.safe_load(params_yaml.read_text()) or {}
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    out: dict[str, StageDecl] = {}
    for name, body in stages.items():
        if "foreach" in body:
            items = _render(body["foreach"], context)
            if not isinstance(items, list):
                raise ValueError(f"dvc.yaml stage {name}: foreach must be a list here, got {items!r}")
            expanded = [(f"{name}@{item}", _render(body["do"], {**context, "item": item})) for item in items]
        else:
            expanded = [(name, _render(body, context))]
        for full_name, stage in expanded:
            out[full_name] = StageDecl(full_name, str(stage.get("cmd", "")),
                                       _entries(stage.get("deps"), f"{full_name}.deps"),
                                       _entries(stage.get("params"), f"{full_name}.params"))
    return out


def declared_params(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> tuple[str, ...]:
    stages = read_stages(dvc_yaml)
    if stage not in stages:
        raise KeyError(f"{dvc_yaml} has no stage {stage!r}; it has {sorted(stages)}")
    return stages[stage].params


def _covered(path: str, allowed: tuple[str, ...]) -> bool:
    return any(path == key or path.startswith(key + ".") for key in allowed)


def _is_prefix(path: str, allowed: tuple[str, ...]) -> bool:
    return any(key.startswith(path + ".") for key in allowed)


class Section(Mapping):
    """A params section of which a stage loaded only some keys; `section.key` and `section["key"]` alike."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({sorted(self._values)})"


class StageParams:
    """Read-only view of validated params (or a part of them) for one stage; see the module docstring.

    Reading a declared key returns the real value; reading a section that holds declared keys returns another
    view; anything else raises `UndeclaredParam` naming the stage and the key. A view is a section of which only
    some keys are declared, so every way to read past one key (`get`, `in` of an undeclared key, iteration,
    `keys()`/`items()`/`values()`/`len`, `model_dump()`/`model_copy()`/`model_dump_json()`, a property or method
    of a pydantic section) raises too. `reads` collects what was read.
    """

    __slots__ = ("_value", "_path", "_allowed", "_stage", "_raw", "reads")

    def __init__(self, value: Any, stage: str, allowed: tuple[str, ...], path: str = "", reads: set[str] | None = None,
                 raw: dict[str, Any] | None = None):
        self._value, self._stage, self._allowed, self._path, self._raw = value, stage, allowed, path, raw
        self.reads = reads if reads is not None else set()

    def _path_of(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _child(self, name: str, value: Any) -> Any:
        path = self._path_of(name)
        if _covered(path, self._allowed):
            if not _covered(path, ALWAYS_READABLE):
                self.reads.add(path)
            return value
        if _is_prefix(path, self._allowed) and isinstance(value, (BaseModel, Mapping)):
            return StageParams(value, self._stage, self._allowed, path, self.reads)
        raise self._undeclared(path)

    def _declared(self) -> list[str]:
        return [p for p in self._allowed if p not in ALWAYS_READABLE]

    def _undeclared(self, path: str) -> UndeclaredParam:
        return UndeclaredParam(
            f"stage {self._stage!r} reads params key {path!r}, which dvc.yaml does not list under the stage's "
            f"`params:` (it lists {self._declared()}); declare it there, or DVC would not re-run the stage when it "
            "changes"
        )

    def _whole(self, how: str) -> UndeclaredParam:
        """The error of a read of every key of this view (`how`: what did it), of which only some are declared."""
        section = repr(self._path) if self._path else "the params"
        inside = [p for p in self._declared() if not self._path or p.startswith(self._path + ".")]
        return UndeclaredParam(
            f"stage {self._stage!r} reads every key of {section} ({how}), of which dvc.yaml declares only {inside} "
            f"under the stage's `params:`; read the declared keys one by one, or declare {section} whole there"
        )

    def _fields(self) -> dict[str, str]:
        """{key as params.yaml writes it: attribute name} of a pydantic section."""
        return {f.alias or n: n for n, f in type(self._value).model_fields.items()}

    def _has(self, key: str) -> bool:
        if isinstance(self._value, BaseModel):
            return key in self._fields()
        return key in self._value

    def _read(self, key: str) -> Any:
        """The value at `key` of this section, through the guard (a key it lacks is undeclared or a KeyError)."""
        path = self._path_of(key)
        if not self._has(key):
            if _covered(path, self._allowed) or _is_prefix(path, self._allowed):
                raise KeyError(path)
            raise self._undeclared(path)
        if isinstance(self._value, BaseModel):
            return self._child(key, getattr(self._value, self._fields()[key]))
        return self._child(key, self._value[key])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle probes, and slots not set yet
            raise AttributeError(name)
        if isinstance(self._value, BaseModel) and name not in self._fields():
            # Evaluated on the model, a property or method would read any of its keys past this guard.
            raise UndeclaredParam(
                f"stage {self._stage!r} reads {self._path_of(name)!r}, a property or method of a params section of "
                f"which dvc.yaml declares only some keys ({self._declared()}): it could read any of them; declare "
                f"{self._path!r} whole under the stage's `params:`")
        try:
            return self._read(name)
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._read(str(key))

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._read(str(key))
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        path = self._path_of(str(key))
        if _covered(path, self._allowed) or _is_prefix(path, self._allowed):
            return self._has(str(key))
        raise self._undeclared(path)  # `in` of an undeclared key would tell what params.yaml holds

    def __bool__(self) -> bool:
        return True  # not `len`: a view is always a section that holds declared keys

    def __iter__(self) -> Iterator[Any]:
        raise self._whole("iteration")

    def __len__(self) -> int:
        raise self._whole("len()")

    def keys(self):
        raise self._whole("keys()")

    def items(self):
        raise self._whole("items()")

    def values(self):
        raise self._whole("values()")

    def model_dump(self, *args: Any, **kwargs: Any) -> Any:
        raise self._whole("model_dump()")

    def model_dump_json(self, *args: Any, **kwargs: Any) -> Any:
        raise self._whole("model_dump_json()")

    def model_copy(self, *args: Any, **kwargs: Any) -> Any:
        raise self._whole("model_copy()")

    def raw_params(self) -> dict[str, Any]:
        """params.yaml as read, to hand to a process that loads the stage's keys again (Ray trials)."""
        if self._raw is None:
            raise ValueError("raw_params() is kept on the whole view only")
        return self._raw

    def __repr__(self) -> str:
        return f"StageParams({self._stage!r}, {self._path or '<root>'})"

"""Inputs that params.yaml names beside the code and the data: a modality of the user's (`modalities.<m>.module`,
a module inside the project) and local checkpoint folders (`modalities.<m>.pretrained`, or an option of the section
such as `tokenizer`, naming an existing folder).

Each is a dependency of the stages that load it, like the code they import: `multimodal.pipeline.stage_deps`
writes them into `dvc.yaml` and `load_params` refuses a stage whose deps lack one. Read from the raw params, without
the modality registry (this package imports nothing above it): a section value naming an existing folder is a
checkpoint, as `multimodal.modalities.checkpoints` resolves one.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A stage module setting this to True builds processors or encoders from its `modalities.<m>` sections: the local
# checkpoint folders named there are its deps. Other stages reading those sections (report) load no checkpoint.
LOADS_CHECKPOINTS = "LOADS_CHECKPOINTS"
# Keys of a modality section that never name a checkpoint folder.
NOT_CHECKPOINTS = ("config", "module", "revision")


def _sections(raw: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    sections = raw.get("modalities")
    if not isinstance(sections, Mapping):
        return {}
    return {str(name): body for name, body in sections.items() if isinstance(body, Mapping)}


def plugin_modules(raw: Mapping[str, Any]) -> list[str]:
    """The modules `modalities.<m>.module` names (every stage importing the registry imports them all)."""
    return sorted({str(body["module"]) for body in _sections(raw).values() if body.get("module")})


def checkpoint_folders(raw: Mapping[str, Any], root: Path, modalities: list[str]) -> dict[str, str]:
    """{folder, as params.yaml writes it: `modalities.<m>.<key>` naming it} for the sections of `modalities`."""
    out: dict[str, str] = {}
    for name, body in _sections(raw).items():
        if name not in modalities:
            continue
        for key, value in body.items():
            if key in NOT_CHECKPOINTS or not isinstance(value, str) or not value.strip():
                continue
            if (root / value).is_dir():
                out.setdefault(value.rstrip("/"), f"modalities.{name}.{key}")
    return out


def declared_modalities(params: tuple[str, ...], raw: Mapping[str, Any]) -> list[str]:
    """The modalities whose sections a stage declares (`modalities`: each one `preprocess.modalities` lists)."""
    listed = (raw.get("preprocess") or {}).get("modalities") or []
    out: list[str] = []
    for key in params:
        parts = key.split(".")
        if parts[0] != "modalities":
            continue
        out += [str(m) for m in listed] if len(parts) == 1 else [parts[1]]
    return sorted(set(out))


def loads_checkpoints(module_path: Path) -> bool:
    """Whether a stage module sets `LOADS_CHECKPOINTS = True` (read from its source, without importing it)."""
    for node in ast.parse(module_path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == LOADS_CHECKPOINTS for t in node.targets):
            return ast.literal_eval(node.value) is True
    return False

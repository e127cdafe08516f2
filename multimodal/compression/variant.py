"""A compressed variant's folder, and the one loader of the original and every variant.

A variant folder is a model folder (`model.json`, `model.safetensors`, `inputs.json`, `encoders/<m>.safetensors`,
`processors/`) plus `compression.json`, which says how its tensors are stored: `int8` lists the layers holding int8
weights and scales (`multimodal.compression.int8`), of the model and of each encoder behind cached features, and
the bits of embedding tables (`embedding_bits`, `group_size`);
`sparse` the tensors stored as bitmask + non-zero values (`multimodal.compression.sparse`) with their shapes.
Only safetensors and JSON are read: the architecture is rebuilt from the spec, then shaped by `compression.json`,
then filled with the tensors.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.compression.int8 import to_int8
from multimodal.compression.sparse import decode, encode
from multimodal.evaluation.efficiency import EndToEnd
from multimodal.modalities import recorded_modality, set_input_norm
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import ENCODERS, INPUTS, PROCESSORS, bundled_processing, read_inputs
from multimodal.models.model import (ModelSpec, MultimodalModel, build_encoder_from_entry, build_model,
                                     state_dict_for_saving)
from multimodal.storage.io import read_json, write_json

COMPRESSION = "compression.json"
WEIGHTS = "*.safetensors"


def load_variant(folder: str | Path) -> tuple[EndToEnd, ModelSpec]:
    """The model in `folder` (the original or a variant) with the encoders behind its cached-feature modalities,
    fed processor outputs of every modality (`EndToEnd`), in eval mode on the CPU; and its spec."""
    folder = Path(folder)
    meta = read_json(folder / COMPRESSION) if (folder / COMPRESSION).exists() else {}
    int8, sparse = meta.get("int8", {}), meta.get("sparse", {})
    inputs = read_inputs(folder)
    for modality, entry in inputs["processing"].items():  # a modality of the user's first: the model builds it
        recorded_modality(modality, entry.get("module"), str(folder))
    spec = ModelSpec(**read_json(folder / "model.json"))
    bits = {key: int8[key] for key in ("embedding_bits", "group_size") if key in int8}
    model = to_int8(build_model(spec), int8.get("model", []), quantize=False, **bits)
    _fill(model, folder / "model.safetensors", sparse.get("model", {}))
    encoders = {}
    for modality in spec.feature_modalities:
        entry = inputs["encoders"][modality]
        encoder = build_encoder_from_entry(modality, {"hf_config": entry["hf_config"]})
        set_input_norm(encoder, modality, entry["input_norm"])
        to_int8(encoder, int8.get("encoders", {}).get(modality, []), quantize=False, **bits)
        _fill(encoder, folder / ENCODERS / f"{modality}.safetensors", sparse.get("encoders", {}).get(modality, {}))
        encoders[modality] = encoder
    return EndToEnd(model, encoders).eval(), spec


def is_variant(folder: str | Path) -> bool:
    return (Path(folder) / COMPRESSION).exists()


def load_variant_for_raw_inputs(folder: str | Path, device: torch.device | str = "cpu"
                                ) -> tuple[MultimodalModel, ModelSpec, dict[str, ModalitySpec]]:
    """A variant folder as `bundle.load_for_raw_inputs` gives a model folder (what predict, serve and export
    run): the model with its own, compressed encoders in place of cached features, its spec, and each modality's
    processing settings pointing at the processors in `folder`."""
    folder = Path(folder)
    end_to_end, spec = load_variant(folder)
    model = end_to_end.model
    for modality, encoder in end_to_end.encoders.items():
        model.embedder.encoders[modality] = encoder
    processing = read_inputs(folder)["processing"]
    return model.to(device).eval(), spec, {m: bundled_processing(folder, m, ModalitySpec.model_validate(processing[m]))
                                           for m in spec.modalities}


def _fill(module: nn.Module, path: Path, shapes: dict[str, list[int]]) -> None:
    try:
        module.load_state_dict(decode(load_file(str(path)), shapes))
    except RuntimeError as err:  # missing or unexpected keys: compression.json and the tensors disagree
        raise ValueError(f"{path} does not fit the model its folder describes ({err}); re-run `dvc repro compress`"
                         ) from None


def save_variant(out: Path, source: Path, model: EndToEnd, spec: ModelSpec, meta: dict[str, Any],
                 sparse: list[str] = ()) -> None:
    """`model` (and the encoders it runs before cached-feature modalities) into `out` as `load_variant` reads it.

    `source`: the original's folder, whose processing settings and processors the variant keeps; `meta`: what
    `compression.json` records (kind, settings, `int8` layer names); `sparse`: names of model tensors to store
    as bitmask + values.
    """
    out.mkdir(parents=True, exist_ok=True)
    tensors, shapes = encode(state_dict_for_saving(model.model), list(sparse))
    save_file(tensors, str(out / "model.safetensors"))
    write_json(out / "model.json", asdict(spec))
    inputs = read_inputs(source)
    (out / ENCODERS).mkdir(exist_ok=True)
    for modality, encoder in model.encoders.items():
        save_file(state_dict_for_saving(encoder), str(out / ENCODERS / f"{modality}.safetensors"))
    write_json(out / INPUTS, {"processing": {m: inputs["processing"][m] for m in spec.modalities},
                              "encoders": {m: inputs["encoders"][m] for m in spec.feature_modalities}})
    for modality in spec.modalities:
        if (source / PROCESSORS / modality).is_dir():
            shutil.copytree(source / PROCESSORS / modality, out / PROCESSORS / modality, dirs_exist_ok=True)
    write_json(out / COMPRESSION, {**meta, "sparse": {"model": shapes} if shapes else {}})


def weights_bytes(folder: Path) -> int:
    """Bytes of the tensors a model needs (its safetensors files: the model and the encoders behind cached
    features), the size the table compares; JSON and processor files are the same in every variant."""
    return sum(p.stat().st_size for p in folder.rglob(WEIGHTS))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

"""What a saved model needs beside its weights to read raw manifest cells, so `predict` runs on new data.

A model reads some modalities as features `align` cached (`align.freeze`, or every one for the `frozen`
strategy): its own weights hold no encoder for them, and new data has no cached features. So a folder that holds
encoders behind cached features (`data/aligned`, and every model folder `tune` writes) also holds:

- `inputs.json`: `processing` (each modality's params section, `modalities.<m>`: the processor and decoder
  settings preprocess used) and `encoders` (for each modality read as features, the HF config and input
  normalisation of the encoder that computed them);
- `encoders/<m>.safetensors`: that encoder's weights (one file per modality: a frozen pretrained encoder's file is
  the same bytes in every run, so DVC stores it once);
- `processors/<m>/`: the processor (tokenizer, image processor, feature extractor) of each modality whose params
  name a checkpoint (`pretrained`, or an option such as `tokenizer`), saved with `save_pretrained`: a model reads
  its processors from its own folder, never from the checkpoint names, which may not resolve where it is used.
  A modality of the user's is recorded by its module (`processing.<m>.module`), imported when the model is loaded.

`load_for_raw_inputs` puts those encoders back where the model has cached-feature inputs; `load_encoders` reads
them alone (evaluate re-encodes corrupted test inputs with align's).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from multimodal.modalities import (
    PooledEncoder,
    get_modality,
    input_norm_of,
    named_checkpoints,
    recorded_modality,
    set_input_norm,
)
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import (
    ModelSpec,
    MultimodalModel,
    build_encoder_from_entry,
    encoder_entry,
    load_model,
    state_dict_for_saving,
)
from multimodal.storage.io import read_json, write_json

logger = logging.getLogger(__name__)

INPUTS = "inputs.json"
ENCODERS = "encoders"
PROCESSORS = "processors"


def save_inputs(out_dir: Path, encoders: dict[str, PooledEncoder], processing: dict[str, ModalitySpec]) -> None:
    """`inputs.json` + `encoders/<m>.safetensors` of `encoders` (those whose outputs were cached as features)."""
    (out_dir / ENCODERS).mkdir(parents=True, exist_ok=True)
    for modality, encoder in encoders.items():
        save_file(state_dict_for_saving(encoder), str(out_dir / ENCODERS / f"{modality}.safetensors"))
    entries = {m: {**encoder_entry(e), "input_norm": input_norm_of(e)} for m, e in encoders.items()}
    write_json(out_dir / INPUTS, {"processing": {m: s.model_dump() for m, s in processing.items()},
                                  "encoders": entries})
    save_processors(out_dir, processing)


def save_processors(out_dir: Path, processing: dict[str, ModalitySpec]) -> None:
    """`processors/<m>/` for each modality whose settings name a checkpoint: the processor it loads from there."""
    for modality, spec in processing.items():
        if not named_checkpoints(get_modality(modality), spec):
            continue  # built from its options alone: nothing outside the model to carry
        processor = get_modality(modality).build_processor(spec)
        if not hasattr(processor, "save_pretrained"):
            logger.warning("the %s processor (%s) cannot be saved with the model: predict loads it from %s again",
                           modality, type(processor).__name__, named_checkpoints(get_modality(modality), spec))
            continue
        processor.save_pretrained(str(out_dir / PROCESSORS / modality))


def bundled_processing(folder: Path, modality: str, spec: ModalitySpec) -> ModalitySpec:
    """`spec` with its checkpoint names pointing at the processor saved in `folder` (if any), so building its
    processor reads the model's folder, whatever the working directory."""
    saved = folder / PROCESSORS / modality
    if not saved.is_dir():
        return spec
    names = named_checkpoints(get_modality(modality), spec)
    return ModalitySpec.model_validate({**spec.model_dump(), **{k: str(saved.resolve()) for k in names},
                                        "revision": None})


def read_inputs(folder: Path) -> dict[str, Any]:
    path = folder / INPUTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {folder} was written before models carried their input "
                                "settings; re-run `dvc repro` (align and tune write it)")
    return read_json(path)


def bundle_inputs(aligned_dir: Path, model_dir: Path) -> None:
    """Give the model saved in `model_dir` the inputs it needs from `align`'s folder: processing of its
    modalities, and the encoders of those it reads as cached features."""
    spec = ModelSpec(**read_json(model_dir / "model.json"))
    aligned = read_inputs(aligned_dir)
    missing = [m for m in spec.feature_modalities if m not in aligned["encoders"]]
    if missing:
        raise ValueError(f"{aligned_dir / INPUTS} holds no encoder of {missing}, which {model_dir} reads as cached "
                         "features; re-run `align`")
    for modality in spec.feature_modalities:
        name = f"{modality}.safetensors"
        (model_dir / ENCODERS).mkdir(exist_ok=True)
        shutil.copyfile(aligned_dir / ENCODERS / name, model_dir / ENCODERS / name)
    for modality in spec.modalities:
        if (aligned_dir / PROCESSORS / modality).is_dir():
            shutil.copytree(aligned_dir / PROCESSORS / modality, model_dir / PROCESSORS / modality, dirs_exist_ok=True)
    write_json(model_dir / INPUTS, {"processing": {m: aligned["processing"][m] for m in spec.modalities},
                                    "encoders": {m: aligned["encoders"][m] for m in spec.feature_modalities}})


def load_encoders(folder: str | Path, modalities: list[str]) -> dict[str, PooledEncoder]:
    """The encoders of `modalities` that `save_inputs` saved in `folder` (align's or a model's), with their input
    normalisation, in eval mode on the CPU: the very weights whose outputs were cached as features."""
    folder = Path(folder)
    entries = read_inputs(folder)["encoders"]
    missing = [m for m in modalities if m not in entries]
    if missing:
        raise ValueError(f"{folder / INPUTS} holds no encoder of {missing}, which are read as cached features; "
                         f"re-run the stage that wrote {folder} (`align`, or `tune` for a model)")
    encoders = {}
    for modality in modalities:
        encoder = build_encoder_from_entry(modality, {"hf_config": entries[modality]["hf_config"]})
        set_input_norm(encoder, modality, entries[modality]["input_norm"])
        encoder.load_state_dict(load_file(str(folder / ENCODERS / f"{modality}.safetensors")))
        encoders[modality] = encoder.eval()
    return encoders


def load_for_raw_inputs(model_dir: str | Path, device: torch.device | str = "cpu"
                        ) -> tuple[MultimodalModel, ModelSpec, dict[str, ModalitySpec]]:
    """The saved model with an encoder for every modality (none reads cached features), its spec, and each
    modality's processing settings, their checkpoint names pointing at the processors in `model_dir`. Only files
    in `model_dir` are read (safetensors, JSON, and the processors' own files)."""
    model_dir = Path(model_dir)
    inputs = read_inputs(model_dir)
    for modality, entry in inputs["processing"].items():  # a modality of the user's first: the model builds it
        recorded_modality(modality, entry.get("module"), str(model_dir))
    model, spec = load_model(model_dir, "cpu")
    for modality, encoder in load_encoders(model_dir, spec.feature_modalities).items():
        if encoder.out_dim != model.embedder.encoders[modality].out_dim:
            raise ValueError(f"{model_dir}: the {modality} encoder gives {encoder.out_dim} features, the model reads "
                             f"{model.embedder.encoders[modality].out_dim}")
        model.embedder.encoders[modality] = encoder
    processing = {m: bundled_processing(model_dir, m, ModalitySpec.model_validate(inputs["processing"][m]))
                  for m in spec.modalities}
    return model.to(device).eval(), spec, processing

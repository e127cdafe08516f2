"""The compress stage's work: variants of the chosen model, each saved, reloaded from its files and measured.

Every model, the original included, is loaded by `variant.load_variant` and run end to end from processor outputs
(the encoders behind cached features too): a variant that changes those encoders (int8, the student) is scored as
it would be used, and all of them on the same test rows.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from multimodal.compression.distill import build_student, distillation_objective, student_spec
from multimodal.compression.int8 import quantizable, to_int8
from multimodal.compression.measure import ORIGINAL, accuracy_rows, probabilities_on_test, table, timings
from multimodal.compression.params import Compress
from multimodal.compression.sparse import apply_pruning, make_permanent, sparse_tensor_names, sparsity
from multimodal.compression.variant import COMPRESSION, load_variant, save_variant, weights_bytes
from multimodal.evaluation.efficiency import EndToEnd
from multimodal.evaluation.params import Efficiency
from multimodal.models.model import ModelSpec
from multimodal.models.temperature import fit_temperature, save_temperature
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json
from multimodal.training.finetune import train_config
from multimodal.training.train import TrainConfig, fit, predict_logits, rows_with_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """The data the variants train and are scored on. `train`, `val`, `test`: processor outputs of every modality
    (what the end-to-end models and the student read); `tuned_train`, `tuned_val`: the form the original model
    trained in (align's cached features for its feature modalities), in which a pruned copy is fine-tuned."""

    train: SplitData
    val: SplitData
    test: SplitData
    tuned_train: SplitData
    tuned_val: SplitData


def training_config(best: Path, epochs: int, lr: float) -> TrainConfig:
    """The chosen model's training knobs (`best_config.yaml`: augmentation, modality dropout, batch size...) for
    `epochs` more epochs at `lr`: distillation and fine-tuning run the loop the original trained with."""
    values = yaml.safe_load((best / "best_config.yaml").read_text())
    return replace(train_config(values), max_epochs=epochs, epoch_limit=None, lr=lr)


def int8_copy(model: EndToEnd, cfg: Compress) -> tuple[EndToEnd, dict]:
    """An int8 copy of `model` and its encoders behind cached features, and the layer names `compression.json`
    records."""
    quantized = copy.deepcopy(model)
    names = {"model": quantizable(quantized.model, cfg.int8.layers, cfg.int8.min_params),
             "encoders": {m: quantizable(e, cfg.int8.layers, cfg.int8.min_params)
                          for m, e in quantized.encoders.items()}}
    bits = {"embedding_bits": cfg.int8.embedding_bits, "group_size": cfg.int8.group_size}
    to_int8(quantized.model, names["model"], **bits)
    for modality, encoder in quantized.encoders.items():
        to_int8(encoder, names["encoders"][modality], **bits)
    return quantized.eval(), {**names, **bits}


def calibrate(folder: Path, model: EndToEnd, spec: ModelSpec, val: SplitData, batch_size: int,
              device: torch.device) -> dict:
    """`folder/temperature.json` fitted on the validation rows the variant sees, as tune fits the original's: a
    variant's probabilities are calibrated as its own (a student's confidence is not its teacher's)."""
    data = rows_with_inputs(val.only(spec.modalities))
    logits = predict_logits(model.to(device), data, batch_size, device)
    model.cpu()
    return save_temperature(folder, fit_temperature(logits, data.labels), logits, data.labels)


def distilled(teacher: EndToEnd, spec: ModelSpec, splits: Splits, cfg: Compress, best: Path,
              device: torch.device) -> tuple[EndToEnd, ModelSpec, dict]:
    """The student trained on the teacher's softened probabilities and the labels, best epoch on validation."""
    d = cfg.distill
    sspec = student_spec(teacher, spec, d.encoders)
    student = build_student(teacher, sspec, spec)
    teacher.to(device)
    result = fit(student, splits.train, splits.val, training_config(best, d.epochs, d.lr), device,
                 objective=distillation_objective(teacher, d.temperature, d.alpha))
    teacher.to("cpu")
    meta = {"kind": "distilled", "temperature": d.temperature, "alpha": d.alpha, "encoders": d.encoders,
            "best_epoch": result.best.epoch, "val_accuracy": result.best.val_accuracy,
            "train_loss": [m.train_loss for m in result.history]}
    return EndToEnd(student.cpu(), {}).eval(), sspec, meta


def pruned(teacher: EndToEnd, splits: Splits, share: float, cfg: Compress, best: Path, device: torch.device
           ) -> tuple[EndToEnd, dict]:
    """The model (not the encoders behind cached features: their features are fixed) pruned to `share`, fine-tuned
    with the pruned weights held at zero, the masks then made permanent."""
    p = cfg.prune
    model = copy.deepcopy(teacher.model)
    apply_pruning(model, share, p.scope)
    meta: dict = {"kind": "pruned", "target_sparsity": share, "scope": p.scope, "epochs": p.epochs}
    if p.epochs:
        result = fit(model, splits.tuned_train, splits.tuned_val, training_config(best, p.epochs, p.lr), device)
        meta |= {"best_epoch": result.best.epoch, "val_accuracy": result.best.val_accuracy}
    make_permanent(model)
    meta["sparsity"] = sparsity(model)
    return EndToEnd(model.cpu(), teacher.encoders).eval(), meta


def build_variants(best: Path, out: Path, splits: Splits, cfg: Compress, device: torch.device) -> dict[str, Path]:
    """Each variant `cfg.variants` names saved under `out/<name>`: {name: folder}."""
    teacher, spec = load_variant(best)
    made: dict[str, Path] = {}

    def save(name: str, model: EndToEnd, vspec: ModelSpec, meta: dict, sparse: list[str] = ()) -> None:
        save_variant(out / name, best, model, vspec, meta, sparse)
        made[name] = out / name
        fitted = calibrate(out / name, model, vspec, splits.val, cfg.batch_size, device)
        logger.info("saved %s (%.1f MB of weights; temperature %.3f on %d validation rows)", out / name,
                    weights_bytes(out / name) / 1e6, fitted["temperature"], fitted["n"])

    if "int8" in cfg.variants:
        model, names = int8_copy(teacher, cfg)
        save("int8", model, spec, {"kind": "int8", "int8": names})
    if {"distilled", "distilled_int8"} & set(cfg.variants):
        student, sspec, meta = distilled(teacher, spec, splits, cfg, best, device)
        if "distilled" in cfg.variants:
            save("distilled", student, sspec, meta)
        if "distilled_int8" in cfg.variants:
            model, names = int8_copy(student, cfg)
            save("distilled_int8", model, sspec, {**meta, "kind": "distilled_int8", "int8": names})
    if "pruned" in cfg.variants:
        for share in cfg.prune.sparsities:
            model, meta = pruned(teacher, splits, share, cfg, best, device)
            save(f"pruned_{round(share * 100)}", model, spec, meta, sparse_tensor_names(model.model))
    return made


def measure(best: Path, made: dict[str, Path], splits: Splits, cfg: Compress, resamples: int, efficiency: Efficiency,
            seed: int, devices: list[torch.device], device: torch.device) -> list[dict]:
    """The table: every model reloaded from its folder, scored on the test rows and timed."""
    folders = {ORIGINAL: best, **made}
    y = splits.test.labels.numpy()
    probs: dict[str, np.ndarray] = {}
    sizes, timed, notes = {}, {}, {}
    for name, folder in folders.items():
        model, spec = load_variant(folder)
        probs[name] = probabilities_on_test(model.to(device), spec, splits.test, cfg.batch_size, device)
        timed[name] = timings(model.cpu(), spec, splits.test, efficiency, devices)
        sizes[name] = weights_bytes(folder)
        notes[name] = _notes(folder, model)
    return table(accuracy_rows(y, probs, resamples, seed), sizes, timed, notes)


def _notes(folder: Path, model: EndToEnd) -> dict:
    """What the table says of a model beside its figures: kind, parameters, sparsity, how its tensors are stored."""
    meta = read_json(folder / COMPRESSION) if (folder / COMPRESSION).exists() else {"kind": "original"}
    # model_bytes: the model's own file (what pruning encodes sparse), without the encoders behind cached features.
    weights = sum(p.numel() for p in model.parameters()) + sum(  # quantized weights are buffers
        b.numel() * (2 if n.endswith("weight_int4") else 1) for n, b in model.named_buffers()
        if n.endswith(("weight_int8", "weight_int4")))
    out = {"kind": meta["kind"], "model_bytes": (folder / "model.safetensors").stat().st_size, "parameters": weights}
    if "sparsity" in meta:
        out |= {"sparsity": meta["sparsity"], "encoding": "bitmask + float32 non-zero values (safetensors)"}
    elif "int8" in meta:
        out["encoding"] = "int8 weights + float32 per-channel scales (safetensors)"
        if meta["int8"].get("embedding_bits") == 4:
            out["encoding"] += f"; embedding tables 4-bit, a scale per {meta['int8']['group_size']} values"
    else:
        out["encoding"] = "float32 (safetensors)"
    return out


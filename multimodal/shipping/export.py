"""An exported bundle: the fused model as an ONNX graph with what another runtime needs to feed it, checked against
PyTorch before it is written.

The bundle folder holds:
- `model.onnx`: the graph (`multimodal.shipping.graph`: inputs `<modality>.<key>` and `<modality>.mask`, output
  `probabilities`, dynamic batch axis, opset `OPSET`), weights inside;
- `inputs.json`: the labels (the order of the probabilities), each input tensor (name, shape with `batch` first,
  dtype), and per modality the preprocessing that makes those tensors: the params section preprocess used
  (`settings`), how a cell is decoded (`decode`), and the processor's own settings (`processor`: image size and
  normalisation, log-mel parameters, tokenizer and `max_length`);
- `processors/<m>/`: the processors whose settings name a checkpoint (the tokenizer), as the model folder holds them;
- `parity.json`: onnxruntime against PyTorch on every row of the check (`check_parity`).
A bundle whose check fails is not written.
"""

from __future__ import annotations

import collections
import inspect
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from multimodal.modalities import get_modality
from multimodal.models.bundle import PROCESSORS, read_inputs
from multimodal.models.model import MultimodalModel
from multimodal.shipping.backends import GRAPH, INPUTS, Backend, OnnxBackend, TorchBackend
from multimodal.shipping.graph import OPSET, OUTPUT, GraphInput, export_graph
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import atomic_dir, write_json

logger = logging.getLogger(__name__)

PARITY = "parity.json"
TOLERANCE = 1e-4  # largest absolute difference of a probability allowed between onnxruntime and PyTorch


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def processor_settings(processor: Any) -> dict[str, Any]:
    """A processor's settings as JSON: an image processor's or feature extractor's own `to_dict`; for a tokenizer
    (which has none) its class, vocabulary size and the files saved in `processors/<m>/`."""
    settings = {"class": type(processor).__name__}
    if hasattr(processor, "to_dict"):
        return settings | {k: v for k, v in processor.to_dict().items() if _is_json(v)}
    for key in ("vocab_size", "model_max_length", "padding_side", "truncation_side", "do_lower_case"):
        value = getattr(processor, key, None)
        if _is_json(value) and value is not None:
            settings[key] = value
    return settings


def _is_json(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _is_json(v) for k, v in value.items())


def describe_inputs(backend: TorchBackend, inputs: list[GraphInput], raw_settings: dict[str, Any]) -> dict[str, Any]:
    """`inputs.json` of a bundle (see the module docstring)."""
    processing = {}
    for modality in backend.modalities:
        mod = get_modality(modality)
        processor = mod.build_processor(backend.processing[modality])
        module_doc = inspect.getdoc(sys.modules[mod.load.__module__]) or ""
        processing[modality] = {
            "settings": raw_settings[modality],  # params `modalities.<m>` when it trained (checkpoint names as given)
            "cell": "a path to a file" if mod.reads_file else "the cell's value itself",
            "decode": " ".join(module_doc.split()),
            "process": " ".join((inspect.getdoc(mod.process) or "").split()),
            "processor": processor_settings(processor),
        }
    tensors = [{"name": i.name, "modality": i.modality, "key": i.key, "shape": ["batch", *i.row_shape],
                "dtype": dtype_name(i.dtype)} for i in inputs]
    return {"opset": OPSET, "graph": GRAPH, "labels": backend.labels, "modalities": backend.modalities,
            "inputs": tensors,
            "masks": "`<modality>.mask` is true where the row has that modality; an absent row's other inputs of that "
                     "modality are ignored (feed zeros)",
            "outputs": [{"name": OUTPUT, "shape": ["batch", len(backend.labels)], "dtype": "float32",
                         "meaning": "class probabilities, in the order of `labels`, calibrated: softmax(logits / "
                                    f"{backend.temperature:g}), the temperature fitted on validation"}],
            "temperature": backend.temperature,
            "processing": processing}


def check_parity(reference: Backend, candidate: Backend, rows: SplitData, batch_size: int) -> dict[str, Any]:
    """Both backends on every row of `rows` that holds a modality of the model, `batch_size` at a time: the largest
    absolute difference of a probability, the rows whose predicted class differs, and how many rows had each
    combination of modalities (rows lacking some are part of the check)."""
    rows = rows.only(reference.modalities)
    rows = rows.take(rows.any_present().nonzero().flatten())
    worst, total, disagree, patterns = 0.0, 0.0, [], collections.Counter()
    for start in range(0, len(rows), batch_size):
        batch = rows.batch(torch.arange(start, min(start + batch_size, len(rows))))
        expected, got = reference.probabilities(batch), candidate.probabilities(batch)
        difference = (expected - got).abs()
        worst, total = max(worst, float(difference.max())), total + float(difference.max(dim=1).values.sum())
        disagree += [sid for sid, same in zip(batch.sample_ids, expected.argmax(1) == got.argmax(1)) if not same]
        patterns.update("+".join(m for m in batch.modalities if batch.masks[m][i]) for i in range(len(batch)))
    return {"rows": len(rows), "max_abs_diff": worst, "mean_row_max_abs_diff": total / max(len(rows), 1),
            "tolerance": TOLERANCE, "predictions_identical": not disagree, "disagreements": disagree[:20],
            "passed": worst <= TOLERANCE and not disagree, "rows_by_modalities": dict(sorted(patterns.items()))}


def export_bundle(model_dir: Path, out: Path, rows: SplitData, batch_size: int) -> dict[str, Any]:
    """Export the model in `model_dir` to the bundle `out`, checked on `rows` (processor outputs with masks, as
    `load_split` gives them); returns the parity report. Raises, leaving `out` as it was, when the check fails."""
    model_dir, out = Path(model_dir), Path(out)
    reference = TorchBackend.load(model_dir, torch.device("cpu"))
    if not isinstance(reference.model, MultimodalModel):
        raise ValueError(f"{model_dir} is not a deep model folder (an ensemble or a classical baseline): export a "
                         "model folder of tune's (models/best, a member an ensemble.json names); one graph holds one "
                         "deep model")
    if not len(rows):
        raise ValueError("no rows to check the export on")
    with atomic_dir(out) as tmp:
        started = time.perf_counter()
        inputs = export_graph(reference.model, reference.modalities, rows.only(reference.modalities), tmp / GRAPH,
                              reference.temperature)
        seconds = time.perf_counter() - started
        for modality in reference.modalities:
            if (model_dir / PROCESSORS / modality).is_dir():
                shutil.copytree(model_dir / PROCESSORS / modality, tmp / PROCESSORS / modality)
        write_json(tmp / INPUTS, describe_inputs(reference, inputs, read_inputs(model_dir)["processing"]),
                   sort_keys=False)
        report = {"opset": OPSET, **check_parity(reference, OnnxBackend.load(tmp), rows, batch_size)}
        logger.info("exported in %.1f s (%.1f MB); onnxruntime vs PyTorch on %d rows: max |dp| %.2e, %s",
                    seconds, (tmp / GRAPH).stat().st_size / 1e6, report["rows"], report["max_abs_diff"],
                    "predictions identical" if report["predictions_identical"] else
                    f"{len(report['disagreements'])}+ predictions differ")
        if not report["passed"]:
            raise ValueError(f"the exported graph disagrees with PyTorch (max |dp| {report['max_abs_diff']:.2e}, "
                             f"allowed {TOLERANCE:g}; rows predicted differently: {report['disagreements']}); "
                             f"{out} is left as it was")
        write_json(tmp / PARITY, report, sort_keys=False)
    return report

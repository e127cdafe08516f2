"""Efficiency of the saved models: parameters per component, latency, throughput and peak memory.

Timings and memory vary from run to run and machine to machine, so they go to a report file, never into the
metrics DVC compares. A model is timed end to end from processor outputs, as prediction on new data runs it: a
modality the model reads as features cached by `align` goes through the encoder that computed them first.
Memory: on CPU the growth of the process's peak resident set during the timed passes (Linux: the peak is reset
through /proc/self/clear_refs first; elsewhere None); on CUDA `torch.cuda.max_memory_allocated` above what was
allocated before.
"""

from __future__ import annotations

import copy
import ctypes
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from multimodal.evaluation.params import Efficiency
from multimodal.models.model import ModelSpec, MultimodalModel
from multimodal.storage.dataset import SplitData
from multimodal.training.train import autocast

PROC = Path("/proc/self")


def count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def parameter_counts(model: MultimodalModel, encoders: Mapping[str, nn.Module]) -> dict:
    """Parameters of each encoder, projection, the fusion and the head, and their total.

    `encoders[m]`: the encoder behind a modality the model reads as cached features (its own entry is then a
    parameter-free stand-in); it counts as that modality's encoder, listed in `cached`.
    """
    cached = [m for m in model.embedder.encoders if m in encoders]
    parts = {"encoders": {m: count(encoders.get(m, e)) for m, e in model.embedder.encoders.items()},
             "projections": {m: count(p) for m, p in model.embedder.projections.items()},
             "fusion": count(model.fusion), "head": count(model.head)}
    total = sum(parts["encoders"].values()) + sum(parts["projections"].values()) + parts["fusion"] + parts["head"]
    return {**parts, "total": total, "cached": cached}


class EndToEnd(nn.Module):
    """`model` fed processor outputs for every modality: cached-feature modalities are encoded first."""

    def __init__(self, model: nn.Module, encoders: Mapping[str, nn.Module]):
        super().__init__()
        self.model = model
        self.encoders = nn.ModuleDict(dict(encoders))

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = dict(inputs)
        for modality, encoder in self.encoders.items():
            rows = masks[modality].nonzero().flatten()
            features = torch.zeros(len(masks[modality]), encoder.out_dim, device=masks[modality].device)
            if len(rows):
                features[rows] = encoder(**{k: v[rows] for k, v in inputs[modality].items()}).float()
            inputs[modality] = {"features": features}
        return self.model(inputs, masks)


def timing_batch(raw: SplitData, modalities: list[str], size: int) -> SplitData:
    """`size` rows of `raw` holding the most of `modalities` (all of them where the split allows), repeated as
    needed: the costliest case of a model that skips absent modalities."""
    held = torch.stack([raw.masks[m] for m in modalities]).sum(0)
    rows = torch.nonzero(held == held.max()).flatten()
    return raw.only(modalities).batch(rows[torch.arange(size) % len(rows)])  # in memory: timed, not read


def _rss_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB (Linux), else None."""
    try:
        for line in (PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Free heap pages back to the OS (glibc's malloc keeps them, so the RSS would not grow again), then restart
    the peak from the current RSS; False where either is not available."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    try:
        (PROC / "clear_refs").write_text("5")  # Linux >= 4.0: VmHWM starts again from the current RSS
        return True
    except OSError:
        return False


@torch.inference_mode()
def time_model(model: nn.Module, batch: SplitData, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median latency of a forward pass on `batch` (per sample, ms), throughput (samples/s), peak memory (MiB)."""
    model.eval()
    batch = batch.to(device)
    cuda = device.type == "cuda"

    def run() -> None:
        with autocast(device):
            model(batch.inputs, batch.masks)
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_kib("VmRSS") if _reset_peak_rss() else None
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        high = _rss_kib("VmHWM")
        peak = (high - before) / 1024 if before is not None and high is not None else None
    median = statistics.median(seconds)
    return {"device": device.type, "batch_size": len(batch), "latency_ms_per_sample": 1000 * median / len(batch),
            "throughput_per_s": len(batch) / median, "peak_memory_mib": peak,
            "memory": "cuda_max_allocated" if cuda else "rss_peak_growth"}


def efficiency_report(models: Mapping[str, tuple[MultimodalModel, ModelSpec]], encoders: Mapping[str, nn.Module],
                      raw: SplitData, cfg: Efficiency, devices: list[torch.device]) -> dict:
    """`{name: {parameters, timing: [a row per device and batch size]}}` of each `(model, spec)`; `encoders[m]`:
    the encoder behind a modality read as cached features (`bundle.load_encoders`), `raw` the processor outputs."""
    out = {}
    for name, (model, spec) in models.items():
        # A cached modality without its encoder here is timed from its features.
        behind = {m: encoders[m] for m in spec.feature_modalities if m in encoders}
        rows = []
        for device in devices:
            runner = copy.deepcopy(EndToEnd(model, behind)).to(device)  # the caller's model stays where it is
            rows += [time_model(runner, timing_batch(raw, spec.modalities, size), device, cfg.warmup, cfg.repeats)
                     for size in cfg.batch_sizes]
        out[name] = {"parameters": parameter_counts(model, behind), "timing": rows}
    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "models": out}

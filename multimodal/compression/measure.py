"""Each variant against the original: accuracy on the same test rows with the same scoring (bootstrap interval,
paired difference), size on disk, latency, throughput and peak memory (`multimodal.evaluation.efficiency`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from multimodal.evaluation.efficiency import time_model, timing_batch
from multimodal.evaluation.evaluate import ModelOnTestSplit
from multimodal.evaluation.params import Efficiency
from multimodal.evaluation.scoring import ABSTAIN, model_scores, paired_difference, rng_for, top_label
from multimodal.models.model import ModelSpec
from multimodal.storage.dataset import SplitData

ORIGINAL = "original"
POINT = 0.01  # "within 1 point": the paired interval of variant minus original stays above -POINT


def probabilities_on_test(model: torch.nn.Module, spec: ModelSpec, test: SplitData, batch_size: int,
                       device: torch.device) -> np.ndarray:
    """(N, C) probabilities of `model` (an `EndToEnd`: every modality from processor outputs) on `test`; NaN on the
    rows holding none of its modalities, as evaluate scores them."""
    return ModelOnTestSplit(model, spec, test.only(spec.modalities)).probabilities(test.only(spec.modalities),
                                                                                  batch_size, device)


def accuracy_rows(y: np.ndarray, probs: Mapping[str, np.ndarray], resamples: int, seed: int) -> dict[str, dict]:
    """Per model: accuracy with its interval on the rows it sees; for a variant, also its paired difference to
    the original on the rows both see (variant minus original) and the share of rows where they agree."""
    preds = {name: top_label(p) for name, p in probs.items()}
    reference = preds[ORIGINAL]
    out = {}
    for name, pred in preds.items():
        scores = model_scores(f"compress/{name}", y, pred, resamples, seed)
        row = {"accuracy": scores["accuracy"], "accuracy_ci95": scores["ci95"], "n": scores["n"]}
        if name != ORIGINAL:
            both = (pred != ABSTAIN) & (reference != ABSTAIN)
            diff = paired_difference(pred[both] == y[both], reference[both] == y[both], resamples,
                                     rng_for(seed, f"compress/paired/{name}"))
            interval = diff["ci95"]
            row |= {"minus_original": diff["difference"], "minus_original_ci95": interval, "paired_n": diff["n"],
                    "agreement": float((pred[both] == reference[both]).mean()) if both.any() else None,
                    "within_1_point": bool(interval is not None and interval[0] >= -POINT)}
        out[name] = row
    return out


def timings(model: torch.nn.Module, spec: ModelSpec, test: SplitData, cfg: Efficiency,
            devices: list[torch.device]) -> list[dict]:
    """`time_model` rows of `model` per device and batch size (a copy is moved to each device)."""
    rows = []
    for device in devices:
        runner = model.to(device)
        rows += [time_model(runner, timing_batch(test, spec.modalities, size), device, cfg.warmup, cfg.repeats)
                 for size in cfg.batch_sizes]
        model.to("cpu")
    return rows


def table(accuracy: Mapping[str, dict], sizes: Mapping[str, int], timed: Mapping[str, list[dict]],
          notes: Mapping[str, dict]) -> list[dict]:
    """One flat row per model (the original first): what the front and the report draw. Ratios are to the
    original: size (weights bytes) and CPU throughput at the largest batch timed."""

    def cpu(name: str) -> list[dict]:
        return [r for r in timed[name] if r["device"] == "cpu"]

    base_size, base_rate = sizes[ORIGINAL], cpu(ORIGINAL)[-1]["throughput_per_s"]
    rows = []
    for name in accuracy:
        row = {"variant": name, **{k: v for k, v in accuracy[name].items() if not k.endswith("ci95")}}
        for key in ("accuracy_ci95", "minus_original_ci95"):
            if accuracy[name].get(key) is not None:
                row[f"{key}_lo"], row[f"{key}_hi"] = accuracy[name][key]
        row |= {"weights_bytes": sizes[name], "size_ratio": sizes[name] / base_size}
        for timing in timed[name]:
            prefix = f"{timing['device']}_b{timing['batch_size']}"
            row[f"{prefix}_latency_ms"] = timing["latency_ms_per_sample"] * timing["batch_size"]
            row[f"{prefix}_throughput_per_s"] = timing["throughput_per_s"]
            row[f"{prefix}_peak_memory_mib"] = timing["peak_memory_mib"]
        smallest = cpu(name)[0]  # the front's x: CPU latency of one call at the smallest batch timed (1 by default)
        row["latency_ms"] = smallest["latency_ms_per_sample"] * smallest["batch_size"]
        row["cpu_throughput_ratio"] = cpu(name)[-1]["throughput_per_s"] / base_rate
        row |= notes.get(name, {})
        rows.append(row)
    # Every row with the same keys (None where a figure does not apply, e.g. the original's difference to itself):
    # DVC's plot loader fails ("argument of type 'NoneType' is not iterable") on rows of differing keys.
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in keys} for row in rows]


def meets_target(row: dict) -> bool:
    """The issue's target: within 1 point of the original (paired interval) at <= 1/4 of its size or >= 2x its
    CPU throughput."""
    return bool(row.get("within_1_point")) and (row["size_ratio"] <= 0.25 or row["cpu_throughput_ratio"] >= 2.0)

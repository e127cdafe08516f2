"""Efficiency report: parameters per component, the end-to-end model that is timed, the timing rows."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from multimodal.evaluation.efficiency import (
    EndToEnd,
    count,
    efficiency_report,
    parameter_counts,
    time_model,
    timing_batch,
)
from multimodal.models.model import ModelSpec, build_model, encoder_entry
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders, encode_present, use_cached_features
from tests.unit.conftest import TINY_SPECS, knobs, params_section

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


def _peak_measurable() -> bool:
    """Whether this platform lets a process restart its resident peak: glibc's malloc_trim and Linux's
    /proc/self/clear_refs (efficiency.py reports None for the peak where either is missing)."""
    try:
        ctypes.CDLL(None).malloc_trim
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, AttributeError):
        return False
    return True


PEAK_MEASURABLE = _peak_measurable()


@pytest.fixture
def image_audio():
    """Raw image and audio inputs; the model reads image through a tiny ViT, audio as cached features."""
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, ["image", "audio"], ["audio"])
    n = 10
    masks = {"image": torch.arange(n) != 3, "audio": torch.arange(n) % 4 != 0}
    raw = SplitData([str(i) for i in range(n)], torch.arange(n) % 3,
                    {"image": {"pixel_values": torch.randn(n, 3, 8, 8)},
                     "audio": {"input_values": torch.randn(n, 16, 16)}}, masks)
    spec = ModelSpec(["image", "audio"], {"image": encoder_entry(encoders["image"]),
                                          "audio": {"features": encoders["audio"].out_dim}},
                     ["x", "y", "z"], dim=8, fusion="gated", dropout=0.0, fusion_knobs=knobs("gated"), input_norm={})
    return build_model(spec).eval(), spec, encoders["audio"].eval(), raw


def test_parameters_per_component_add_up_and_count_the_encoder_behind_cached_features(image_audio):
    model, _, audio_encoder, _ = image_audio
    got = parameter_counts(model, {"audio": audio_encoder})
    assert got["encoders"] == {"image": count(model.embedder.encoders["image"]), "audio": count(audio_encoder)}
    assert got["encoders"]["audio"] > 0 and count(model.embedder.encoders["audio"]) == 0  # the stand-in has none
    assert got["projections"]["image"] == 16 * 8 + 8 + 2 * 8  # Linear(16 -> 8) + LayerNorm(8)
    assert got["fusion"] == 8 + 1 and got["head"] == 8 * 3 + 3  # gate Linear(8 -> 1), head Linear(8 -> 3)
    assert got["total"] == count(model) + count(audio_encoder) and got["cached"] == ["audio"]


def test_the_timed_model_reads_processor_outputs_as_prediction_would(image_audio):
    model, _, audio_encoder, raw = image_audio
    features = use_cached_features(raw, {"audio": encode_present(audio_encoder, raw, "audio", 4, CPU)})
    with torch.no_grad():
        expected = model(features.inputs, features.masks)
        got = EndToEnd(model, {"audio": audio_encoder})(raw.inputs, raw.masks)
    assert torch.allclose(got, expected, atol=1e-5)


def test_timing_batch_takes_the_fullest_rows_repeated():
    masks = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([False, True, True, True])}
    data = SplitData(list("pqrs"), torch.zeros(4, dtype=torch.long), {"a": {}, "b": {}}, masks)
    assert timing_batch(data, ["a", "b"], 5).sample_ids == ["q", "s", "q", "s", "q"]
    assert timing_batch(data, ["a"], 2).sample_ids == ["p", "q"]


def test_report_rows_per_model_device_and_batch_size(image_audio):
    model, spec, audio_encoder, raw = image_audio
    cfg = params_section("evaluate").efficiency.model_copy(update={"batch_sizes": [1, 4], "repeats": 2})
    report = efficiency_report({"fused": (model, spec)}, {"audio": audio_encoder}, raw, cfg, [CPU])
    rows = report["models"]["fused"]["timing"]
    assert [(r["device"], r["batch_size"]) for r in rows] == [("cpu", 1), ("cpu", 4)]
    for row in rows:
        assert row["latency_ms_per_sample"] > 0 and row["throughput_per_s"] > 0
        assert row["throughput_per_s"] * row["latency_ms_per_sample"] / 1000 == pytest.approx(1.0)
        assert row["memory"] == "rss_peak_growth"
        if PEAK_MEASURABLE:
            # The growth of the resident peak over the passes: zero is a true reading for a tiny model whose
            # activations fit in heap pages the process already holds (malloc_trim cannot return fragmented ones;
            # seen in a pytest-xdist worker that had run other tests first).
            assert isinstance(row["peak_memory_mib"], float) and 0 <= row["peak_memory_mib"] < 256, row
        else:
            assert row["peak_memory_mib"] is None
    assert report["models"]["fused"]["parameters"]["cached"] == ["audio"]


def test_peak_memory_sees_a_large_pass():
    """A pass allocating ~64 MiB shows up in the peak (on Linux, where the peak can be reset)."""
    class Big(torch.nn.Module):
        def forward(self, inputs, masks):
            return torch.ones(len(masks["a"]), 2**24).sum(1)  # 64 MiB of float32

    data = SplitData(["0"], torch.zeros(1, dtype=torch.long), {"a": {}}, {"a": torch.ones(1, dtype=torch.bool)})
    row = time_model(Big(), data, CPU, warmup=0, repeats=1)
    assert row["latency_ms_per_sample"] > 0 and row["throughput_per_s"] > 0 and row["batch_size"] == 1
    if PEAK_MEASURABLE:
        assert 48 < row["peak_memory_mib"] < 200, row  # 64 MiB, and not the whole process
    else:
        assert row["peak_memory_mib"] is None

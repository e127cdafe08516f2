"""CUDA path of the training loop: device picked once, bf16 autocast, same API. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from multimodal.modalities.base import FeatureInput
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.pipeline.runtime import pick_device
from multimodal.training.train import fit, predict
from tests.unit.conftest import knobs, train_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fit_on_cuda_with_bf16_autocast(make_split):
    train, val = make_split(n=256, seed=0), make_split(n=64, seed=1)
    device = pick_device("auto")
    assert device.type == "cuda"
    model = MultimodalModel(Embedder({m: FeatureInput(v["features"].shape[1]) for m, v in train.inputs.items()}, 16),
                            "attention", n_classes=int(train.labels.max()) + 1, dropout=0.0,
                            fusion_knobs=knobs("attention"))
    result = fit(model, train, val, train_config(lr=5e-3, max_epochs=5, batch_size=32, patience=5, precision="bf16"), device)
    assert next(model.parameters()).device.type == "cuda"
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert predict(model, val, 64, device).shape == (len(val), int(train.labels.max()) + 1)


def test_efficiency_report_times_cuda_and_leaves_the_model_where_it_was(make_split):
    from multimodal.evaluation.efficiency import efficiency_report
    from multimodal.models.model import ModelSpec, build_model
    from tests.unit.conftest import params_section

    data = make_split(n=16, seed=0)
    spec = ModelSpec(["a", "b"], {"a": {"features": 8}, "b": {"features": 8}}, ["x", "y", "z"], 8, "concat", 0.0,
                     knobs("concat"), {})
    model = build_model(spec)
    cfg = params_section("evaluate").efficiency.model_copy(update={"batch_sizes": [1, 8], "repeats": 2})
    report = efficiency_report({"fused": (model, spec)}, {}, data, cfg, [torch.device("cpu"), torch.device("cuda")])
    rows = report["models"]["fused"]["timing"]
    assert [(r["device"], r["batch_size"]) for r in rows] == [("cpu", 1), ("cpu", 8), ("cuda", 1), ("cuda", 8)]
    assert all(r["memory"] == "cuda_max_allocated" and r["peak_memory_mib"] > 0 for r in rows[2:])
    assert next(model.parameters()).device.type == "cpu"

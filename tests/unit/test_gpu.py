"""CUDA path of the training loop: device picked once, bf16 autocast, same API. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from multimodal.model import Embedder, MultimodalModel
from multimodal.modalities.base import FeatureInput
from multimodal.runtime import pick_device
from multimodal.train import fit, predict
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

"""Temperature scaling: fitted on validation NLL, never changes the argmax, saved beside the model."""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.models.temperature import TEMPERATURE, fit_temperature, load_temperature, nll, save_temperature


def overconfident(n: int = 400, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits right on about 60% of rows, scaled so the model is ~99% sure of every answer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.randn(n, classes, generator=generator)
    right = torch.rand(n, generator=generator) < 0.6
    logits[right, labels[right]] += 2.0
    return 8.0 * logits, labels


def test_temperature_lowers_validation_nll_and_never_changes_the_argmax():
    logits, labels = overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature > 1.5  # overconfident: softened
    assert nll(logits, labels, temperature) < nll(logits, labels, 1.0) - 0.5
    assert torch.equal((logits / temperature).softmax(1).argmax(1), logits.argmax(1))
    # The minimum: a step either way costs NLL.
    assert nll(logits, labels, temperature) <= min(nll(logits, labels, temperature * s) for s in (0.9, 1.1))


def test_an_underconfident_model_is_sharpened_and_no_rows_give_one():
    logits, labels = overconfident()
    assert fit_temperature(logits / 40, labels) < 1.0
    assert fit_temperature(torch.empty(0, 4), torch.empty(0, dtype=torch.long)) == 1.0


def test_saved_beside_the_model_and_read_back(tmp_path):
    logits, labels = overconfident(n=50)
    record = save_temperature(tmp_path, 2.5, logits, labels)
    assert load_temperature(tmp_path) == 2.5 and record["n"] == 50
    assert record["val_nll_after"] < record["val_nll_before"]
    assert load_temperature(tmp_path / "older") == 1.0  # a model saved before calibration: as trained
    (tmp_path / TEMPERATURE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match=r"temperature\.json: `temperature` must be a positive number.*re-run"):
        load_temperature(tmp_path)

"""Explanations: Integrated Gradients' completeness on tiny config-built image and audio encoders (with their
input normalisation), and modality contributions as passes with one mask off."""

from __future__ import annotations

import pytest
import torch

from multimodal.models.explain import integrated_gradients, probabilities, with_contributions
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders
from tests.unit.conftest import TINY_SPECS, knobs

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_rows() -> tuple[MultimodalModel, SplitData]:
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, ["image", "audio"], [], {"image": "per_image", "audio": "utterance_bins"})
    model = MultimodalModel(Embedder(encoders, 8), "concat", 3, 0.0, knobs("concat")).eval()
    # As after training, no weight left at 0: at init AST's biases and position embeddings are 0, so its first
    # LayerNorm sees 0 at the reference and a scaled copy of one vector everywhere else on the path, a step that
    # no path integral follows. The head far from 0: probabilities that move.
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    torch.nn.init.normal_(model.head.weight, std=2.0)
    n = 4
    inputs = {"image": {"pixel_values": torch.randn(n, 3, 8, 8)}, "audio": {"input_values": torch.randn(n, 16, 16)}}
    masks = {"image": torch.tensor([True, True, True, False]), "audio": torch.tensor([True, False, True, True])}
    return model, SplitData([f"r{i}" for i in range(n)], torch.zeros(n, dtype=torch.long), inputs, masks)


@pytest.mark.parametrize("modality, key", [("image", "pixel_values"), ("audio", "input_values")])
def test_attributions_sum_to_the_change_from_the_reference(model_and_rows, modality, key):
    model, data = model_and_rows
    rows = data.take(data.masks[modality].nonzero().flatten())
    target = probabilities(model, rows, 1.5, 8, CPU).argmax(dim=1)
    attributions, gap = integrated_gradients(model, rows, modality, key, target, temperature=1.5, steps=64,
                                             rows_per_pass=20)  # several points per pass, over several passes
    assert attributions.shape == rows.inputs[modality][key].shape
    assert gap.abs().max() > 1e-3  # the input moves the probability: the check below is not 0 = 0
    sums = attributions.flatten(1).sum(dim=1)
    assert torch.allclose(sums, gap, atol=0.02 * gap.abs().max().item() + 1e-4), (sums, gap)
    assert model.embedder.encoders[modality].input_norm is not None  # put back after the path


def test_each_contribution_is_the_drop_when_that_modality_is_masked(model_and_rows):
    model, data = model_and_rows
    probs, contrib = with_contributions(model, data, 2.0, 3, CPU)  # two batches
    assert torch.allclose(probs, probabilities(model, data, 2.0, 8, CPU), atol=1e-6)
    chosen = probs.argmax(dim=1)
    for modality in data.modalities:
        for i in range(len(data)):
            if not data.masks[modality][i]:
                assert torch.isnan(contrib[modality][i])
                continue
            row = data.take(torch.tensor([i]))
            row.masks[modality] = torch.zeros(1, dtype=torch.bool)
            with torch.no_grad():  # an independent forward pass of that one row
                alone = torch.softmax(model(row.inputs, row.masks) / 2.0, dim=-1)[0, chosen[i]]
            assert contrib[modality][i].item() == pytest.approx((probs[i, chosen[i]] - alone).item(), abs=1e-5)

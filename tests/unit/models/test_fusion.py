"""The fusion zoo inside the model: every fusion learns through the real loop, with modalities missing; the
definitions of late, weighted and low-rank tensor fusion checked against their formulas."""

from __future__ import annotations

import pytest
import torch

from multimodal.models.fusion import FUSIONS, build_fusion
from multimodal.models.model import ModelSpec, build_model
from multimodal.training.train import fit
from multimodal.tuning.params import FUSIONS as CONFIG_FUSIONS
from multimodal.tuning.params import TrainFixed
from tests.unit.conftest import knobs, train_config

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
ORDER = ["a", "b", "c"]


def test_config_validates_exactly_the_implemented_fusions():
    assert set(CONFIG_FUSIONS) == set(FUSIONS)


def test_every_fusion_knob_is_a_params_knob_and_required():
    """Heads, layers and rank come from params (tune.fixed), not from constructor defaults."""
    declared = {knob for cls in FUSIONS.values() for knob in getattr(cls, "knobs", ())}
    assert declared == {"attention_heads", "attention_layers", "tensor_rank"}
    assert declared <= set(TrainFixed.model_fields)
    with pytest.raises(ValueError, match=r"takes the knobs \['attention_heads', 'attention_layers'\], got \[\]"):
        build_fusion("attention", ORDER, 8, knobs={})
    with pytest.raises(ValueError, match="takes the knobs"):
        build_fusion("concat", ORDER, 8, knobs={"tensor_rank": 2})


def test_attention_knobs_shape_the_fusion():
    fusion = build_fusion("attention", ORDER, 8, knobs={"attention_heads": 2, "attention_layers": 3})
    assert len(fusion.encoder.layers) == 3
    assert fusion.encoder.layers[0].self_attn.num_heads == 2
    # Heads that do not divide the width are reduced to a divisor, so any align.dim works.
    odd = build_fusion("attention", ORDER, 6, knobs={"attention_heads": 4, "attention_layers": 1})
    assert odd.encoder.layers[0].self_attn.num_heads == 2


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_every_fusion_learns_with_missing_modalities(make_split, kind):
    dims = {"a": 6, "b": 6, "c": 6}
    train = make_split(150, dims=dims, missing=0.3, seed=0)
    val = make_split(60, dims=dims, missing=0.3, seed=1)
    torch.manual_seed(0)
    model = build_model(ModelSpec(ORDER, {m: {"features": 6} for m in ORDER}, ["x", "y", "z"], dim=8, fusion=kind,
                                  dropout=0.1, fusion_knobs=knobs(kind), input_norm={}))
    cfg = train_config(lr=1e-2, fusion=kind, dropout=0.1, batch_size=16, max_epochs=5, patience=5, seed=0)
    result = fit(model, train, val, cfg, CPU)
    losses = [m.train_loss for m in result.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result.best.val_accuracy >= 0.8
    # A row with no modality at all: finite logits and finite gradients.
    model.train()
    inputs = {m: {"features": v["features"][:4]} for m, v in val.inputs.items()}
    masks = {m: torch.tensor([False, True, True, False]) for m in ORDER}
    logits = model(inputs, masks)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def masked_inputs(dim: int = 5):
    gen = torch.Generator().manual_seed(3)
    z = {m: torch.randn(4, dim, generator=gen) for m in ORDER}
    masks = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False, True, False]),
             "c": torch.tensor([True, False, False, False])}
    return z, masks  # rows: all present, only a, only b, none


def test_late_fusion_averages_the_logits_of_present_modalities():
    torch.manual_seed(0)
    z, masks = masked_inputs()
    fusion = build_fusion("late", ORDER, 5, n_classes=3, knobs={})
    out = fusion(z, masks)
    per = {m: fusion.classifiers[m](z[m]) for m in ORDER}
    assert torch.allclose(out[0], (per["a"][0] + per["b"][0] + per["c"][0]) / 3, atol=1e-6)
    assert torch.allclose(out[1], per["a"][1], atol=1e-6)
    assert torch.allclose(out[2], per["b"][2], atol=1e-6)
    assert torch.equal(out[3], torch.zeros(3))
    # The model puts no shared head after it.
    model = build_model(ModelSpec(ORDER, {m: {"features": 5} for m in ORDER}, ["x", "y", "z"], dim=5, fusion="late",
                                  dropout=0.0, fusion_knobs={}, input_norm={}))
    assert model.head is None and not [k for k in model.state_dict() if k.startswith("head.")]
    with pytest.raises(ValueError, match="needs n_classes"):
        build_fusion("late", ORDER, 5, knobs={})


def test_weighted_fusion_renormalises_over_present_modalities():
    z, masks = masked_inputs()
    fusion = build_fusion("weighted", ORDER, 5, knobs={})
    with torch.no_grad():
        fusion.scores.copy_(torch.tensor([0.0, 1.0, 2.0]))
    out = fusion(z, masks)
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), dim=0)
    assert torch.allclose(out[0], sum(w * z[m][0] for w, m in zip(weights, ORDER)), atol=1e-6)
    assert torch.allclose(out[1], z["a"][1], atol=1e-6)  # the only one present gets weight 1
    assert torch.allclose(out[2], z["b"][2], atol=1e-6)
    assert torch.equal(out[3], torch.zeros(5))


def test_tensor_fusion_is_the_low_rank_product_with_absent_modalities_on_their_bias_path():
    torch.manual_seed(0)
    z, masks = masked_inputs()
    fusion = build_fusion("tensor", ORDER, 5, knobs={"tensor_rank": 4})
    assert (fusion.rank, fusion.out_dim) == (4, 5)
    assert build_fusion("tensor", ORDER, 5, knobs={"tensor_rank": 2}).factors["a"].shape == (2, 6, 5)
    out = fusion(z, masks)

    def reference(row: int) -> torch.Tensor:
        product = torch.ones(fusion.rank, 5)
        for m in ORDER:
            value = z[m][row] if masks[m][row] else torch.zeros(5)
            product = product * torch.einsum("i,rio->ro", torch.cat([torch.ones(1), value]), fusion.factors[m])
        return fusion.rank_weights[0] @ product + fusion.bias

    for row in range(4):
        assert torch.allclose(out[row], reference(row), atol=1e-5)
    assert torch.isfinite(out).all()

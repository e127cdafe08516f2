"""Int8 weights (4-bit embedding tables): close to the float model, saved as int8/uint8 tensors in safetensors,
loaded without pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from multimodal.compression.compress import int8_copy
from multimodal.compression.int8 import (Int4Embedding, Int8Conv2d, Int8Embedding, Int8Linear, dequantize_groups,
                                        quantizable, quantize_groups, quantize_weight, to_int8)
from multimodal.compression.variant import load_variant, save_variant
from multimodal.shipping.backends import load_any_for_raw_inputs
from multimodal.shipping.export import export_bundle
from tests.unit.compression.tiny import save_tiny_best
from tests.unit.conftest import params_section

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def best(tmp_path: Path):
    splits, spec = save_tiny_best(tmp_path / "best")
    return tmp_path / "best", splits, spec


def test_each_weight_is_within_half_a_step_of_its_int8_value():
    weight = torch.randn(5, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.0]).view(5, 1, 1, 1)
    values, scale = quantize_weight(weight)
    assert values.dtype == torch.int8 and scale.shape == (5,)
    restored = values.float() * scale.view(5, 1, 1, 1)
    assert ((restored - weight).abs() <= scale.view(5, 1, 1, 1) / 2 + 1e-7).all()
    assert (restored[4] == 0).all()  # an all-zero channel stays zero


def test_each_embedding_weight_is_within_half_a_step_of_its_4_bit_value():
    torch.manual_seed(0)
    table = torch.randn(6, 16) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.0, 1.0]).view(6, 1)
    table[5, 8:] = 0  # one all-zero group in a row that is not zero
    packed, scale = quantize_groups(table, group_size=8)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 8) and scale.shape == (6, 2)
    restored = dequantize_groups(packed, scale)
    step = scale.repeat_interleave(8, dim=1)
    assert ((restored - table).abs() <= step / 2 + 1e-7).all()
    assert (restored[4] == 0).all() and (restored[5, 8:] == 0).all()
    assert torch.equal(dequantize_groups(packed[[3, 1]], scale[[3, 1]]), restored[[3, 1]])  # rows looked up alone


def test_a_4_bit_table_answers_lookups_as_the_float_table_up_to_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 16), nn.Embedding(20, 12))  # 12: not whole groups of 8, stays int8
    ids = torch.randint(0, 20, (4, 5))
    with torch.no_grad():
        expected = [layer(ids) for layer in model]
        to_int8(model, quantizable(model, ["embedding"], 1), embedding_bits=4, group_size=8)
        assert [type(m) for m in model] == [Int4Embedding, Int8Embedding]
        step = model[0].scale.repeat_interleave(8, dim=1)[ids]
        assert ((model[0](ids) - expected[0]).abs() <= step / 2 + 1e-6).all()
        assert torch.equal(model[0].weight[ids], model[0](ids))


def test_int8_layers_compute_what_the_float_layers_compute_up_to_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 8))
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    ids, images = torch.randint(0, 20, (4, 5)), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected, expected_conv = model(ids), conv(images)
        to_int8(model, quantizable(model, ["linear", "embedding"], 1))
        holder = nn.Sequential(conv)
        to_int8(holder, quantizable(holder, ["conv"], 1))
        assert [type(m) for m in (*model, *holder)] == [Int8Embedding, Int8Linear, Int8Conv2d]
        assert torch.allclose(model(ids), expected, atol=0.05)
        assert torch.allclose(holder(images), expected_conv, atol=0.05)


@pytest.mark.parametrize("embedding_bits", [8, 4])
def test_the_quantized_model_predicts_as_the_original_and_reloads_from_safetensors_only(best, tmp_path, monkeypatch,
                                                                                        embedding_bits):
    folder, splits, _ = best
    original, spec = load_variant(folder)
    cfg = params_section("compress", int8={"min_params": 1, "embedding_bits": embedding_bits, "group_size": 8})
    quantized, names = int8_copy(original, cfg)
    assert names["model"] and names["encoders"]["text"]  # the image ResNet and the BERT behind cached features
    save_variant(tmp_path / "int8", folder, quantized, spec, {"kind": "int8", "int8": names})
    # Loading reads JSON and safetensors only: any unpickling fails the test.
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, lambda *a, **k: pytest.fail("pickle used to load a variant"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used to load a variant"))
    reloaded, _ = load_variant(tmp_path / "int8")
    test = splits.test
    with torch.no_grad():
        before = torch.softmax(original(test.inputs, test.masks), -1)
        saved = torch.softmax(quantized(test.inputs, test.masks), -1)
        after = torch.softmax(reloaded(test.inputs, test.masks), -1)
    assert torch.equal(saved, after)
    assert (after - before).abs().max() < 0.02
    # What predict, serve and export load: the same model, its int8 encoders in place of cached features.
    raw_model, raw_spec, processing = load_any_for_raw_inputs(tmp_path / "int8", torch.device("cpu"))
    assert raw_spec == spec and set(processing) == set(spec.modalities)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(raw_model(test.inputs, test.masks), -1), after, atol=1e-6)
    assert (after.argmax(1) == before.argmax(1)).float().mean() >= 0.9
    with safe_open(str(tmp_path / "int8" / "encoders" / "text.safetensors"), "pt") as handle:
        names = handle.keys()  # a safetensors handle, not a dict
        dtypes = {key: handle.get_slice(key).get_dtype() for key in names}
    stored = {8: ("weight_int8", "I8"), 4: ("weight_int4", "U8")}[embedding_bits]
    assert dtypes[f"model.embeddings.word_embeddings.{stored[0]}"] == stored[1]
    assert not any(key.endswith("word_embeddings.weight") for key in dtypes)


def test_a_variant_whose_files_disagree_with_its_description_is_refused_naming_the_file(best, tmp_path):
    folder, _, spec = best
    original, _ = load_variant(folder)
    save_variant(tmp_path / "v", folder, original, spec, {"kind": "int8", "int8": {"model": [], "encoders": {}}})
    # compression.json now claims int8 layers the tensors do not hold.
    (tmp_path / "v" / "compression.json").write_text('{"kind": "int8", "int8": {"model": ["head"]}}')
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit"):
        load_variant(tmp_path / "v")


def test_a_quantized_variant_exports_to_onnx_and_onnxruntime_agrees(best, tmp_path):
    """The variant's int8 weights and 4-bit tables go into the graph as they are; onnxruntime loads it and agrees
    with PyTorch on every test row (export_bundle refuses to write a bundle that does not)."""
    folder, splits, spec = best
    original, _ = load_variant(folder)
    cfg = params_section("compress", int8={"min_params": 1, "embedding_bits": 4, "group_size": 8})
    quantized, names = int8_copy(original, cfg)
    save_variant(tmp_path / "int8", folder, quantized, spec, {"kind": "int8", "int8": names})
    report = export_bundle(tmp_path / "int8", tmp_path / "onnx", splits.test, batch_size=8)
    assert report["predictions_identical"] and report["max_abs_diff"] <= 1e-4

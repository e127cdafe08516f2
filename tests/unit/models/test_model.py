"""Tiny config-built encoders through the real modality modules, every fusion, and the save/load round trip."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.modalities import PooledEncoder, build_pooled_encoder, get_modality
from multimodal.modalities.base import FeatureInput
from multimodal.models.fusion import FUSIONS, build_fusion
from multimodal.models.model import (
    Embedder,
    ModelSpec,
    MultimodalModel,
    build_encoder_from_entry,
    build_model,
    encoder_entry,
    load_model,
    save_model,
)
from tests.unit.conftest import knobs

pytestmark = pytest.mark.usefixtures("single_thread")

B = 4



def tiny_encoders(specs) -> dict[str, PooledEncoder]:
    torch.manual_seed(0)
    return {name: build_pooled_encoder(name, spec) for name, spec in specs.items()}


def tiny_inputs(specs) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    text = get_modality("text")
    tokens = text.process(text.build_processor(specs["text"]),
                          ["a cat", "a dog barks loudly at night and day", "", "zebra"], specs["text"])
    return {
        "image": {"pixel_values": torch.randn(B, 3, 8, 8, generator=gen)},
        "audio": {"input_values": torch.randn(B, 16, 16, generator=gen)},
        "text": tokens,
    }


def test_text_processor_pads_to_max_length(tiny_specs):
    inputs = tiny_inputs(tiny_specs)["text"]
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"}
    assert inputs["input_ids"].shape == (B, 8)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    assert lengths[2] == 2  # [CLS] [SEP] only
    assert lengths[1] == 8  # truncated to max_length


def test_encoders_and_embedder_shapes(tiny_specs):
    encoders = tiny_encoders(tiny_specs)
    assert {m: e.out_dim for m, e in encoders.items()} == {"image": 16, "audio": 16, "text": 16}
    assert encoders["text"].model.config.vocab_size == 30522  # MiniLM's tokenizer vocabulary
    inputs = tiny_inputs(tiny_specs)
    for name, encoder in encoders.items():
        pooled = encoder(**inputs[name])
        assert pooled.shape == (B, 16)
        assert torch.isfinite(pooled).all()
    embedder = Embedder(encoders, dim=12)
    z = embedder(inputs, {m: torch.ones(B, dtype=torch.bool) for m in inputs})
    assert list(z) == ["image", "audio", "text"]
    for value in z.values():
        assert value.shape == (B, 12)
        # LayerNorm output: per-row mean 0.
        assert torch.allclose(value.mean(dim=1), torch.zeros(B), atol=1e-5)


def test_pooled_encoder_ignores_padding_tokens(tiny_specs):
    encoder = tiny_encoders({"text": tiny_specs["text"]})["text"].eval()
    text = get_modality("text")
    tokens = text.process(text.build_processor(tiny_specs["text"]), ["a cat"], tiny_specs["text"])
    garbled = {k: v.clone() for k, v in tokens.items()}
    garbled["input_ids"][0, 5:] = 1000  # padded positions carry other ids; the mask hides them
    with torch.no_grad():
        assert torch.allclose(encoder(**tokens), encoder(**garbled), atol=1e-6)


def test_encoder_entry_rebuilds_the_same_architecture(tiny_specs):
    encoders = tiny_encoders(tiny_specs)
    for name, encoder in encoders.items():
        entry = encoder_entry(encoder)
        json.dumps(entry)  # must be JSON-serialisable for model.json
        rebuilt = build_encoder_from_entry(name, entry)
        assert type(rebuilt.model) is type(encoder.model)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
            {k: v.shape for k, v in encoder.state_dict().items()}
    assert encoder_entry(FeatureInput(7)) == {"features": 7}
    assert isinstance(build_encoder_from_entry("image", {"features": 7}), FeatureInput)


def fusion_inputs(dim: int = 8):
    gen = torch.Generator().manual_seed(0)
    z = {m: torch.randn(5, dim, generator=gen, requires_grad=True) for m in ("a", "b", "c")}
    masks = {
        "a": torch.tensor([True, False, True, False, True]),
        "b": torch.tensor([True, True, False, False, False]),
        "c": torch.tensor([True, True, True, False, False]),
    }
    return z, masks  # row 3 has no modality at all


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fusion_handles_missing_modalities(kind):
    torch.manual_seed(0)
    z, masks = fusion_inputs()
    fusion = build_fusion(kind, ["a", "b", "c"], 8, n_classes=3, knobs=knobs(kind))
    head = torch.nn.Linear(fusion.out_dim, 3)
    logits = head(fusion(z, masks))
    assert logits.shape == (5, 3)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    params = [p for p in [*fusion.parameters(), *head.parameters()] if p.grad is not None]
    assert params and all(torch.isfinite(p.grad).all() for p in params)
    for m in ("a", "b", "c"):
        assert torch.isfinite(z[m].grad).all()
        # Absent modalities get no gradient: their values do not influence the output.
        assert torch.count_nonzero(z[m].grad[~masks[m]]) == 0
        assert torch.count_nonzero(z[m].grad[masks[m]]) > 0
    # Eval mode (attention's fast path) stays finite too.
    fusion.eval()
    with torch.no_grad():
        assert torch.isfinite(fusion(z, masks)).all()


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fusion_ignores_values_of_absent_modalities(kind):
    torch.manual_seed(0)
    z, masks = fusion_inputs()
    fusion = build_fusion(kind, ["a", "b", "c"], 8, n_classes=3, knobs=knobs(kind)).eval()
    noisy = {m: torch.where(masks[m].unsqueeze(1), v, torch.full_like(v, 1e3)) for m, v in z.items()}
    with torch.no_grad():
        assert torch.allclose(fusion(z, masks), fusion(noisy, masks), atol=1e-5)


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        build_fusion("sum", ["a"], 8, knobs={})


def test_model_with_real_encoders_trains_and_masks(tiny_specs):
    spec_encoders = tiny_encoders(tiny_specs)
    model = MultimodalModel(Embedder(spec_encoders, 8), "attention", n_classes=3, dropout=0.0,
                            fusion_knobs=knobs("attention"))
    inputs = tiny_inputs(tiny_specs)
    masks = {"image": torch.tensor([True, False, True, False]), "audio": torch.tensor([True, True, False, False]),
             "text": torch.tensor([False, True, True, False])}
    logits = model(inputs, masks)
    assert logits.shape == (B, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    for name in ("image", "audio", "text"):
        grads = [p.grad for p in model.embedder.encoders[name].parameters() if p.grad is not None]
        assert grads and any(torch.count_nonzero(g) > 0 for g in grads), name


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_save_load_round_trip(tmp_path, tiny_specs, kind):
    encoders = tiny_encoders(tiny_specs)
    encoders["cached"] = FeatureInput(5)  # a frozen modality stored as cached features
    # Knobs unlike params.yaml's: the loaded model must take them from model.json, not from anywhere else.
    fusion_knobs = {k: v for k, v in {"attention_heads": 2, "attention_layers": 2, "tensor_rank": 3}.items()
                    if k in knobs(kind)}
    model = MultimodalModel(Embedder(encoders, 8), kind, n_classes=2, dropout=0.1, fusion_knobs=fusion_knobs)
    spec = ModelSpec(list(encoders), {m: encoder_entry(e) for m, e in encoders.items()}, ["neg", "pos"],
                     dim=8, fusion=kind, dropout=0.1, fusion_knobs=fusion_knobs, input_norm={}, extra={"note": "x"})
    # Perturb every weight so a freshly initialised model cannot match by chance.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(model, spec, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]

    loaded, loaded_spec = load_model(tmp_path / "m")
    # JSON turns int dict keys (HF id2label) into strings; otherwise the spec is what was saved.
    assert loaded_spec == ModelSpec(**json.loads(json.dumps(asdict(spec))))
    assert (loaded_spec.modalities, loaded_spec.labels, loaded_spec.fusion) == (list(encoders), ["neg", "pos"], kind)
    assert loaded_spec.fusion_knobs == fusion_knobs
    assert not loaded.training
    inputs = tiny_inputs(tiny_specs)
    inputs["cached"] = {"features": torch.randn(B, 5)}
    masks = {m: torch.tensor([True, True, False, True]) for m in encoders}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs, masks), loaded(inputs, masks))
    fresh = build_model(spec).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(inputs, masks), loaded(inputs, masks))


def test_spec_restricted_keeps_only_named_modalities():
    spec = ModelSpec(["a", "b"], {"a": {"features": 3}, "b": {"features": 4}}, ["x", "y"], dim=6, fusion="concat",
                     dropout=0.1, fusion_knobs={}, input_norm={})
    sub = spec.restricted(["b"])
    assert sub.modalities == ["b"] and sub.encoders == {"b": {"features": 4}}
    assert (sub.labels, sub.dim, sub.fusion) == (["x", "y"], 6, "concat")
    model = build_model(sub)
    assert list(model.embedder.encoders) == ["b"]
    assert model.head.out_features == 2 and model.fusion.out_dim == 7  # concat: 1 x (6 + 1)


def test_absent_rows_as_stored_by_load_split_embed_finitely(tiny_specs):
    """`load_split` fills absent rows with zeros (all-padding text); encoders must stay finite on them."""
    encoders = tiny_encoders(tiny_specs)
    zeros = {
        "image": {"pixel_values": torch.zeros(2, 3, 8, 8)},
        "audio": {"input_values": torch.zeros(2, 16, 16)},
        "text": {k: torch.zeros(2, 8, dtype=torch.long) for k in ("input_ids", "token_type_ids", "attention_mask")},
    }
    embedder = Embedder(encoders, 8)
    for mode in (embedder.train, embedder.eval):
        mode()
        z = embedder(zeros, {m: torch.ones(2, dtype=torch.bool) for m in zeros})
        assert all(torch.isfinite(v).all() for v in z.values())


def test_attention_fusion_accepts_any_allowed_dim():
    z, masks = fusion_inputs(dim=6)
    out = build_fusion("attention", ["a", "b", "c"], 6, knobs=knobs("attention"))(z, masks)
    assert out.shape == (5, 6)


@pytest.mark.parametrize("name", ["image", "audio", "text"])
def test_pretrained_path_loads_a_saved_checkpoint_and_its_processor(tmp_path, tiny_specs, name):
    """The hub-id code path, fed a local folder written by `save_pretrained` (no network)."""
    modality = get_modality(name)
    torch.manual_seed(0)
    original = modality.build_encoder(tiny_specs[name])
    original.save_pretrained(tmp_path)
    modality.build_processor(tiny_specs[name]).save_pretrained(tmp_path)
    spec = tiny_specs[name].model_copy(update={"pretrained": str(tmp_path), "config": {}})

    processor = modality.build_processor(spec)
    items = {
        "image": lambda: [Image.new("RGB", (12, 10), (200, 30, 90)), Image.new("RGB", (8, 8), (0, 255, 0))],
        "audio": lambda: [np.sin(np.linspace(0, 300, 4000)).astype(np.float32), np.zeros(1600, np.float32)],
        "text": lambda: ["a cat", "seven is prime"],
    }[name]()
    inputs = modality.process(processor, items, spec)
    reference = modality.process(modality.build_processor(tiny_specs[name]), items, tiny_specs[name])
    assert inputs.keys() == reference.keys() and all(torch.equal(inputs[k], reference[k]) for k in inputs)
    encoder = PooledEncoder(modality.build_encoder(spec)).eval()
    with torch.no_grad():
        pooled = encoder(**inputs)
        assert pooled.shape == (2, 16) and torch.isfinite(pooled).all()
        assert torch.allclose(pooled, PooledEncoder(original).eval()(**inputs), atol=1e-6)


def test_a_saved_encoder_entry_holds_no_machine_path():
    """A pretrained encoder's config carries the folder it came from; saved outputs must not (they would differ
    between machines and leak local paths)."""
    from multimodal.modalities.spec import ModalitySpec

    encoder = build_pooled_encoder("text", ModalitySpec(pretrained="minilm", config={}, max_length=8, tokenizer="minilm"))
    assert encoder.model.config._name_or_path  # the loaded config has one
    entry = encoder_entry(encoder)
    assert "_name_or_path" not in entry["hf_config"]
    assert type(build_encoder_from_entry("text", entry).model) is type(encoder.model)

"""Fine-tuning strategies on a tiny aligned directory written by align's own `align_and_cache`, with raw image/audio
inputs (config-built ViT with two blocks, AST with one) and a cached-feature `text` modality (as `align.freeze`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.evaluation.evaluate import inputs_for
from multimodal.modalities.base import FeatureInput
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import load_model, save_model
from multimodal.models.strategies import STRATEGIES, feature_modalities, train_last_blocks
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json
from multimodal.training.align import build_encoders, load_cached_features
from multimodal.training.finetune import check_inputs, finetune, initial_model
from multimodal.training.train import TrainConfig, predict
from tests.unit.conftest import TINY_SPECS, train_config, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
LABELS = ["x", "y", "z"]
SPECS = {
    "image": ModalitySpec(pretrained=None, image_size=8,
                          config={"patch_size": 4, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 32}),
    "audio": ModalitySpec(pretrained=None, sampling_rate=16000, num_mel_bins=16, max_length=16,
                          config={"patch_size": 8, "frequency_stride": 8, "time_stride": 8, "hidden_size": 16,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}),
    "text": TINY_SPECS["text"],  # frozen (`align.freeze`): read as the features align cached
}
SIZES = {"train": 48, "val": 24, "test": 24}
NO_NORM = {"image": "none", "audio": "none"}  # the raw inputs here are synthetic tensors, not log-mel features


def raw_split(n: int, seed: int) -> SplitData:
    """Class centre + noise per image/audio; 'text' as 6 tokens, words of its class; ~15% of each modality missing."""
    centres = torch.Generator().manual_seed(7)
    shapes = {"image": ("pixel_values", (3, 8, 8)), "audio": ("input_values", (16, 16))}
    means = {m: torch.randn(3, *shape, generator=centres) for m, (_, shape) in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    present = torch.rand(n, 3, generator=gen) >= 0.15
    present[~present.any(dim=1), 0] = True
    inputs, masks = {}, {}
    for i, (m, (key, shape)) in enumerate(shapes.items()):
        x = means[m][labels] + 0.5 * torch.randn(n, *shape, generator=gen)
        x[~present[:, i]] = 0.0
        inputs[m], masks[m] = {key: x}, present[:, i].clone()
    ids = 1000 + 10 * labels[:, None] + torch.randint(0, 4, (n, 6), generator=gen)  # [CLS] 4 words [SEP]
    ids[:, 0], ids[:, -1] = 101, 102
    attended = present[:, 2:].long().expand(n, 6)
    inputs["text"] = {"input_ids": ids * attended, "attention_mask": attended.clone(),
                      "token_type_ids": torch.zeros_like(ids)}
    masks["text"] = present[:, 2].clone()
    return SplitData([f"{seed}-{i}" for i in range(n)], labels, inputs, masks)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> tuple[Path, dict[str, SplitData]]:
    """An aligned directory as the `align` stage writes it, and the raw splits it was computed from."""
    torch.manual_seed(0)
    encoders = build_encoders(SPECS, list(SPECS), ["text"])
    raw = {split: raw_split(n, seed) for seed, (split, n) in enumerate(SIZES.items())}
    out = tmp_path_factory.mktemp("aligned")
    write_aligned(out, raw, encoders, ["text"], SPECS, dim=8, input_norm=NO_NORM)
    return out, raw


def split_for(aligned_dir: Path, raw: dict[str, SplitData], split: str, strategy: str) -> SplitData:
    """What `load_splits(params, strategy=...)` gives: cached features where the strategy reads them."""
    cached = feature_modalities(strategy, read_json(aligned_dir / "embedder.json"))
    return load_cached_features(aligned_dir, raw[split], split, cached)


def config(strategy: str, **overrides) -> TrainConfig:
    return train_config(**{**dict(lr=1e-2, fusion="concat", dropout=0.0, modality_dropout=0.0, batch_size=16,
                                  input_norm=NO_NORM,
                                  max_epochs=4, patience=10, seed=0, strategy=strategy, last_k=1, lora_rank=4,
                                  lora_alpha=8), **overrides})


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in after if not torch.equal(before[k], after[k])}


def test_feature_modalities_follow_the_strategy():
    meta = {"modalities": ["image", "audio", "text"],
            "encoders": {"image": {"hf_config": {}}, "audio": {"hf_config": {}}, "text": {"features": 384}}}
    assert feature_modalities("frozen", meta) == ["image", "audio", "text"]
    for strategy in ("last_k", "lora", "full"):
        assert feature_modalities(strategy, meta) == ["text"]
    with pytest.raises(ValueError, match="unknown fine-tuning strategy 'partial'"):
        feature_modalities("partial", meta)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_lowers_the_loss_and_handles_missing_modalities(aligned, strategy):
    aligned_dir, raw = aligned
    train, val = (split_for(aligned_dir, raw, s, strategy) for s in ("train", "val"))
    cfg = config(strategy)
    model, spec, result = finetune(aligned_dir, LABELS, train, val, cfg, CPU)
    losses = [m.train_loss for m in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    # Cached features exactly where the strategy says; the spec records it for evaluate and load_model.
    reads_features = {m for m, e in model.embedder.encoders.items() if isinstance(e, FeatureInput)}
    assert reads_features == set(spec.feature_modalities)
    assert reads_features == ({"image", "audio", "text"} if strategy == "frozen" else {"text"})
    # Inference with each modality missing, and a row with none at all.
    for hidden in [*train.modalities, None]:
        masks = {m: torch.zeros_like(v) if hidden in (m, None) else v for m, v in val.masks.items()}
        probs = predict(model, SplitData(val.sample_ids, val.labels, val.inputs, masks), 8, CPU)
        assert probs.shape == (len(val), 3) and torch.isfinite(probs).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unimodal_baseline_for_every_strategy(aligned, strategy):
    aligned_dir, raw = aligned
    train, val = (split_for(aligned_dir, raw, s, strategy) for s in ("train", "val"))
    model, spec, result = finetune(aligned_dir, LABELS, train, val, config(strategy, max_epochs=2), CPU, ["image"])
    assert list(model.embedder.encoders) == spec.modalities == ["image"]
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_frozen_runs_no_encoder_and_matches_the_aligned_encoders_on_raw_inputs(aligned, tmp_path):
    aligned_dir, raw = aligned
    train, val, test = (split_for(aligned_dir, raw, s, "frozen") for s in ("train", "val", "test"))
    model, spec, _ = finetune(aligned_dir, LABELS, train, val, config("frozen"), CPU)
    assert all(isinstance(e, FeatureInput) for e in model.embedder.encoders.values())
    assert all(not n.startswith("embedder.encoders") for n, _ in model.named_parameters())
    # The aligned encoders (bit-identical, never trained) on raw inputs, then the trained rest, give the same
    # predictions: the cached features are those encoders' outputs.
    on_raw, _ = initial_model(aligned_dir, LABELS, spec.modalities, config("full"))
    state = {k: v for k, v in model.state_dict().items()}
    on_raw.load_state_dict({**on_raw.state_dict(), **state})
    raw_test = load_cached_features(aligned_dir, raw["test"], "test", ["text"])
    assert torch.allclose(predict(model, test, 8, CPU), predict(on_raw, raw_test, 8, CPU), atol=1e-5)
    # Saved and reloaded, it reads the cached features evaluate attaches from its spec.
    save_model(model, spec, tmp_path / "m")
    loaded, loaded_spec = load_model(tmp_path / "m")
    assert loaded_spec.feature_modalities == ["image", "audio", "text"]
    assert torch.equal(predict(loaded, inputs_for(loaded_spec, raw_test, aligned_dir), 8, CPU),
                       predict(model, test, 8, CPU))


def test_last_k_trains_only_the_last_blocks(aligned):
    aligned_dir, raw = aligned
    train, val = (split_for(aligned_dir, raw, s, "last_k") for s in ("train", "val"))
    cfg = config("last_k")
    initial, _ = initial_model(aligned_dir, LABELS, train.modalities, cfg)  # what finetune starts from
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    model, _, _ = finetune(aligned_dir, LABELS, train, val, cfg, CPU)
    moved = changed(before, model.state_dict())
    image = "embedder.encoders.image.model."
    assert {k for k in moved if k.startswith(image + "layers.1.")}, "the last image block must train"
    assert not {k for k in moved if k.startswith((image + "layers.0.", image + "embeddings."))}
    assert image + "layernorm.weight" in moved  # the final layernorm after the blocks trains too
    # The one-block audio encoder: its only block trains.
    assert {k for k in moved if k.startswith("embedder.encoders.audio.model.layers.0.")}
    assert {k for k in moved if k.startswith("embedder.projections.")}


def test_last_k_names_a_model_without_blocks():
    with pytest.raises(ValueError, match="Sequential"):
        train_last_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 1)


def test_lora_trains_only_adapters_and_saves_a_plain_model(aligned, tmp_path):
    aligned_dir, raw = aligned
    train, val, test = (split_for(aligned_dir, raw, s, "lora") for s in ("train", "val", "test"))
    cfg = config("lora")
    initial, _ = initial_model(aligned_dir, LABELS, train.modalities, cfg)
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    model, spec, _ = finetune(aligned_dir, LABELS, train, val, cfg, CPU)
    after = model.state_dict()
    assert set(before) == set(after)
    moved = changed(before, after)
    encoder_keys = {k for k in after if k.startswith("embedder.encoders.")}
    adapters = {k for k in encoder_keys if ".lora_" in k}
    assert adapters and {k for k in adapters if ".lora_B." in k} <= moved  # lora_B starts at zero
    assert not (encoder_keys - adapters) & moved, "base weights must stay bit-identical"
    assert {k for k in after if k.startswith(("embedder.projections.", "head."))} & moved
    # Saving merges into a copy: the model under training keeps its adapters and its outputs.
    expected = predict(model, test, 8, CPU)
    save_model(model, spec, tmp_path / "m")
    assert model.state_dict().keys() == after.keys()
    assert torch.equal(predict(model, test, 8, CPU), expected)
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not [k for k in saved if "lora_" in k or "base_layer" in k]
    # Reloaded in a process where importing peft fails: the same predictions.
    save_file({f"{m}.{k}": v[:] for m, d in test.inputs.items() for k, v in d.items()}  # lazy columns read
              | {f"mask.{m}": v for m, v in test.masks.items()}, str(tmp_path / "test.safetensors"))
    script = f"""
import sys
sys.modules["peft"] = None  # any import of peft now raises
import torch
from safetensors.torch import load_file, save_file
from multimodal.models.model import load_model
model, spec = load_model({str(tmp_path / 'm')!r})
data = load_file({str(tmp_path / 'test.safetensors')!r})
inputs = {{m: {{k.split('.', 1)[1]: v for k, v in data.items() if k.startswith(m + '.')}} for m in spec.modalities}}
masks = {{m: data['mask.' + m] for m in spec.modalities}}
with torch.no_grad():
    save_file({{'probs': torch.softmax(model(inputs, masks), dim=-1)}}, {str(tmp_path / 'out.safetensors')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[3],
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    probs = load_file(str(tmp_path / "out.safetensors"))["probs"]
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.equal(probs.argmax(dim=1), expected.argmax(dim=1))


def test_lora_targets_that_match_nothing_name_the_modules(aligned):
    aligned_dir, _ = aligned
    with pytest.raises(ValueError, match=r"lora_targets \['qkv'\].*q_proj"):
        initial_model(aligned_dir, LABELS, ["image"], config("lora", lora_targets=["qkv"]))


def test_raw_inputs_for_a_frozen_model_are_refused_with_the_fix(aligned):
    aligned_dir, raw = aligned
    full = split_for(aligned_dir, raw, "train", "full")
    with pytest.raises(ValueError, match=r"strategy=<the config's strategy>"):
        finetune(aligned_dir, LABELS, full, full, config("frozen"), CPU)
    _, spec = initial_model(aligned_dir, LABELS, full.modalities, config("full"))
    check_inputs(spec, full)  # the matching form passes

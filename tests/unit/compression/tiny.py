"""A tiny saved model laid out as `tune` writes `models/best` (model + inputs.json + the encoder behind cached
features + best_config.yaml), and its splits in both forms: built from config in well under a second."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from multimodal.compression.compress import Splits
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import save_inputs
from multimodal.models.model import ModelSpec, build_model, encoder_entry, save_model
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders, encode_present, use_cached_features
from tests.unit.conftest import TINY_SPECS, knobs, train_config

CPU = torch.device("cpu")
LABELS = ["x", "y", "z"]
# A small ResNet (convolutions to quantize and prune) and a 2-layer BERT read as cached features, as the demo's
# MiniLM is: the student can keep one of its layers.
SPECS = {
    "image": ModalitySpec(pretrained=None, image_size=8,
                          config={"model_type": "resnet", "num_channels": 3, "embedding_size": 8,
                                  "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic",
                                  "downsample_in_first_stage": False}),
    "text": ModalitySpec.model_validate({**TINY_SPECS["text"].model_dump(),
                                         "config": {**TINY_SPECS["text"].config, "num_hidden_layers": 2,
                                                    "vocab_size": 64}}),
}


def raw_split(n: int, seed: int) -> SplitData:
    """Images whose mean brightness and texts whose first token say the class; a few rows lack a modality."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(LABELS)
    pixels = torch.randn(n, 3, 8, 8, generator=gen) * 0.5 + labels[:, None, None, None].float()
    ids = torch.randint(5, 64, (n, 8), generator=gen)
    ids[:, 0] = labels + 1
    masks = {"image": torch.arange(n) % 7 != 3, "text": torch.arange(n) % 5 != 1}
    return SplitData([f"{seed}-{i}" for i in range(n)], labels,
                     {"image": {"pixel_values": pixels},
                      "text": {"input_ids": ids, "attention_mask": torch.ones(n, 8, dtype=torch.long)}}, masks)


def save_tiny_best(folder: Path) -> tuple[Splits, ModelSpec]:
    """`folder` as models/best, and the splits (train 60, val 30, test 30 rows) in both forms."""
    torch.manual_seed(0)
    encoders = build_encoders(SPECS, ["image", "text"], ["text"])
    spec = ModelSpec(["image", "text"], {"image": encoder_entry(encoders["image"]),
                                         "text": {"features": encoders["text"].out_dim}},
                     LABELS, dim=8, fusion="concat", dropout=0.0, fusion_knobs=knobs("concat"), input_norm={})
    model = build_model(spec)
    model.embedder.encoders["image"].load_state_dict(encoders["image"].state_dict())
    save_model(model, spec, folder)
    save_inputs(folder, {"text": encoders["text"].eval()}, SPECS)
    cfg = train_config(fusion="concat", batch_size=16, max_epochs=1, patience=1, modality_dropout=0.0,
                       augment_strength=0.0)
    (folder / "best_config.yaml").write_text(yaml.safe_dump(asdict(cfg)))
    raw = {name: raw_split(n, seed) for name, n, seed in (("train", 60, 1), ("val", 30, 2), ("test", 30, 3))}
    tuned = {name: use_cached_features(raw[name], {"text": encode_present(encoders["text"].eval(), raw[name],
                                                                          "text", 16, CPU)})
             for name in ("train", "val")}
    return Splits(raw["train"], raw["val"], raw["test"], tuned["train"], tuned["val"]), spec

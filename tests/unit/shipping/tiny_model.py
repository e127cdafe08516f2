"""A tiny saved model as `tune` writes it, from real PNG/WAV files and texts through the real processors: the
subject of the export and serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from multimodal.data.manifest import SPLITS
from multimodal.models.bundle import bundle_inputs
from multimodal.models.model import save_model
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.storage.dataset import SplitData, load_split
from multimodal.training.align import build_encoders
from multimodal.training.finetune import initial_model
from tests.unit.conftest import TINY_SPECS, train_config, write_aligned
from tests.unit.shipping.test_predict import LABELS, MODALITIES, NORM, write_dataset

# Small ResNets for image and audio, as the default project has them (the tiny AST of TINY_SPECS, untrained, has
# all-zero position embeddings: a silent patch becomes a zero vector that LayerNorm's 1e-12 epsilon turns rounding
# noise of any runtime into O(1) outputs, which says nothing about an export).
RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
          "layer_type": "basic", "downsample_in_first_stage": False}
SPECS = {**TINY_SPECS,
         "image": TINY_SPECS["image"].model_copy(update={"config": {**RESNET, "num_channels": 3}}),
         "audio": TINY_SPECS["audio"].model_copy(update={"config": {**RESNET, "num_channels": 1}})}




def build_tiny_model(tmp: Path) -> tuple[Path, Path, SplitData]:
    """(dataset folder with `manifest.csv`, model folder, the dataset's rows as processor outputs) under `tmp`:
    text read as cached features, the attention fusion."""
    frame = write_dataset(tmp / "dataset").assign(split="test")
    for m in MODALITIES:
        preprocess_modality(frame, tmp / "dataset", tmp / "pre" / m, modality=m, spec=SPECS[m], batch_size=5,
                            shard_size=8)
    test = load_split(frame, "test", LABELS, tmp / "pre", MODALITIES)
    torch.manual_seed(0)
    encoders = build_encoders(SPECS, MODALITIES, ["text"], NORM)
    (tmp / "aligned").mkdir()
    write_aligned(tmp / "aligned", {s: test for s in SPLITS}, encoders, ["text"], SPECS, dim=8, input_norm=NORM,
                  batch_size=4)
    # The attention fusion: the one with an in-place mask update and a transformer over the modality tokens.
    model, spec = initial_model(tmp / "aligned", LABELS, MODALITIES,
                                train_config(strategy="full", input_norm=NORM, fusion="attention"))
    torch.nn.init.normal_(model.head.weight)  # a head far from zero: distinct probabilities per row
    save_model(model, spec, tmp / "best")
    bundle_inputs(tmp / "aligned", tmp / "best")
    return tmp / "dataset", tmp / "best", test

"""Config-built encoders of any architecture (`config.model_type`): CNNs for images and spectrograms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multimodal.modalities import PooledEncoder, build_pooled_encoder
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import build_encoder_from_entry, encoder_entry
from multimodal.models.strategies import add_lora, train_last_blocks
from tests.unit.conftest import train_config

pytestmark = pytest.mark.usefixtures("single_thread")

RESNET = {"model_type": "resnet", "embedding_size": 4, "hidden_sizes": [8, 12], "depths": [1, 1],
          "layer_type": "basic"}


def encoder(modality: str, **config) -> PooledEncoder:
    torch.manual_seed(0)
    spec = ModalitySpec(pretrained=None, num_mel_bins=16, max_length=16, image_size=8, config=config)
    return build_pooled_encoder(modality, spec)


def test_model_type_picks_the_architecture_and_defaults_stay():
    assert type(encoder("image").model).__name__ == "ViTModel"
    assert type(encoder("audio", patch_size=8, frequency_stride=8, time_stride=8, hidden_size=16,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).model).__name__ == "ASTModel"
    assert type(encoder("image", **RESNET).model).__name__ == "ResNetModel"


def test_cnn_image_encoder_pools_its_grid():
    image = encoder("image", **RESNET, num_channels=3)
    out = image(pixel_values=torch.randn(3, 3, 8, 8))
    assert image.out_dim == 12 and out.shape == (3, 12) and torch.isfinite(out).all()


def test_spectrogram_reaches_a_cnn_as_a_one_channel_image():
    audio = encoder("audio", **RESNET, num_channels=1)
    spectrogram = torch.randn(2, 16, 16)  # (batch, frames, mel bins) as the AST feature extractor gives it
    out = audio(input_values=spectrogram)
    expected = audio.model(pixel_values=spectrogram.transpose(1, 2).unsqueeze(1)).last_hidden_state.mean(dim=(2, 3))
    assert torch.equal(out, expected)


def test_cnn_encoder_rebuilds_from_its_saved_entry():
    audio = encoder("audio", **RESNET, num_channels=1).eval()
    rebuilt = build_encoder_from_entry("audio", encoder_entry(audio))
    rebuilt.load_state_dict(audio.state_dict())
    x = torch.randn(2, 16, 16)
    assert torch.equal(rebuilt.eval()(input_values=x), audio(input_values=x))


def test_lora_and_last_k_reach_cnn_layers():
    audio = encoder("audio", **RESNET, num_channels=1)
    adapted = add_lora(audio.model, train_config(lora_rank=2))
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("convolution" in n for n in trainable)

    cnn = encoder("image", **RESNET, num_channels=3).model
    train_last_blocks(cnn, 1)
    trained = {n for n, p in cnn.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("encoder.stages.1.") for n in trained)
    assert any(isinstance(m, nn.Conv2d) for m in cnn.encoder.stages[1].modules())

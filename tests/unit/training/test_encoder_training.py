"""What the encoders see in training: frozen parts stay in eval mode (BatchNorm statistics and dropout do not
move), and rows lacking a modality never reach its encoder. On the default config-built ResNets of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from multimodal.modalities import PooledEncoder, build_pooled_encoder
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.models.strategies import apply_strategy, train_last_blocks
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders, train_alignment
from multimodal.training.train import fit
from stages.check_params import load_all
from tests.unit.conftest import align_config, knobs, train_config

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
SPECS = load_all(Path(__file__).parents[3] / "params.yaml").modalities
SHAPES = {"image": ("pixel_values", (3, 28, 28)), "audio": ("input_values", (128, 64))}  # as preprocess writes them


def default_encoders() -> dict[str, PooledEncoder]:
    torch.manual_seed(0)
    return {m: build_pooled_encoder(m, SPECS[m]) for m in SHAPES}


def split(n: int, seed: int) -> SplitData:
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: {key: torch.randn(n, *shape, generator=gen)} for m, (key, shape) in SHAPES.items()}
    masks = {m: torch.ones(n, dtype=torch.bool) for m in SHAPES}
    return SplitData([f"{seed}-{i}" for i in range(n)], torch.arange(n) % 3, inputs, masks)


def batch_norms(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def buffers(norms: dict[str, nn.Module]) -> dict[str, list[torch.Tensor]]:
    return {name: [b.clone() for b in m.buffers()] for name, m in norms.items()}


def moved(before: dict[str, list[torch.Tensor]], after: dict[str, list[torch.Tensor]]) -> set[str]:
    return {name for name in before if not all(torch.equal(a, b) for a, b in zip(before[name], after[name]))}


@pytest.mark.parametrize("strategy", ["last_k", "lora", "full"])
def test_frozen_batchnorm_statistics_stay_bit_identical(strategy):
    embedder = Embedder(default_encoders(), dim=8)
    cfg = train_config(lr=1e-2, batch_size=16, max_epochs=2, patience=5, modality_dropout=0.0, seed=0,
                       strategy=strategy, last_k=1, lora_rank=2, lora_alpha=4, dropout=0.1)
    apply_strategy(embedder, cfg)
    model = MultimodalModel(embedder, "concat", 3, dropout=0.1, fusion_knobs=knobs("concat"))
    norms = batch_norms(model)
    still = {name for name, m in norms.items() if frozen(m)}
    expected_still = {"last_k": {n for n in norms if ".encoder.stages.2." not in n}, "lora": set(norms),
                      "full": set()}[strategy]
    assert len(norms) == 2 * 9 and still == expected_still  # 9 BatchNorms per default ResNet
    before = buffers(norms)
    fit(model, split(32, 0), split(16, 1), cfg, CPU)  # 2 epochs of 2 steps, in train mode
    assert moved(before, buffers(norms)) == set(norms) - still


def test_align_keeps_a_frozen_encoder_in_eval_mode():
    """An encoder frozen as `align.freeze` does, left in the embedder: its statistics stay; the other's move."""
    encoders = build_encoders(SPECS, list(SHAPES), frozen=["image"])
    embedder = Embedder(encoders, dim=8)
    before = {m: buffers(batch_norms(e)) for m, e in encoders.items()}
    train_alignment(embedder, split(32, 0), align_config(dim=8, epochs=1, batch_size=16, seed=0), CPU)
    assert not moved(before["image"], buffers(batch_norms(encoders["image"])))
    assert moved(before["audio"], buffers(batch_norms(encoders["audio"]))) == set(before["audio"])


def test_dropout_of_frozen_blocks_is_off_and_of_trained_blocks_on():
    spec = ModalitySpec(pretrained=None, image_size=8, config={"patch_size": 4, "hidden_size": 16, "num_hidden_layers": 2,
                                              "num_attention_heads": 2, "intermediate_size": 32,
                                              "hidden_dropout_prob": 0.5})
    encoder = build_pooled_encoder("image", spec)
    train_last_blocks(encoder.model, 1)
    encoder.train()
    dropouts = {n: m.training for n, m in encoder.named_modules() if isinstance(m, nn.Dropout)}
    assert any(n.startswith("model.layers.0.") for n in dropouts)
    assert all(on == n.startswith("model.layers.1.") for n, on in dropouts.items()), dropouts
    encoder.eval()
    assert not any(m.training for m in encoder.modules())


def test_absent_rows_never_reach_the_encoder():
    encoder = default_encoders()["image"]
    embedder = Embedder({"image": encoder}, dim=8).train()  # train mode: BatchNorm normalises with batch statistics
    seen = []
    encoder.register_forward_pre_hook(lambda _, args, kwargs: seen.append(len(kwargs["pixel_values"])),
                                      with_kwargs=True)
    gen = torch.Generator().manual_seed(0)
    present = torch.randn(5, 3, 28, 28, generator=gen)
    alone = embedder({"image": {"pixel_values": present}}, {"image": torch.ones(5, dtype=torch.bool)})["image"]
    for absent in (torch.zeros(1, 3, 28, 28), 10 * torch.randn(7, 3, 28, 28, generator=gen)):
        n = len(present) + len(absent)
        order = torch.randperm(n, generator=gen)  # present rows scattered through the batch
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[: len(present)]] = True
        x = torch.empty(n, 3, 28, 28)
        x[order[: len(present)]], x[order[len(present):]] = present, absent
        out = embedder({"image": {"pixel_values": x}}, {"image": mask})["image"]
        assert torch.allclose(out[order[: len(present)]], alone, atol=1e-5)
        assert out.shape == (n, 8) and not out[~mask].any()
    # A batch where no row has the modality runs no encoder at all.
    out = embedder({"image": {"pixel_values": torch.randn(3, 3, 28, 28)}}, {"image": torch.zeros(3, dtype=torch.bool)})
    assert out["image"].shape == (3, 8) and not out["image"].any()
    assert seen == [5, 5, 5]

"""Magnitude pruning: the stated sparsity, held through fine-tuning, permanent, and stored smaller than dense."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.compression.compress import pruned
from multimodal.compression.sparse import (
    MASK,
    apply_pruning,
    decode,
    encode,
    make_permanent,
    pack_bits,
    sparse_tensor_names,
    sparsity,
    unpack_bits,
)
from multimodal.compression.variant import load_variant, save_variant
from tests.unit.compression.tiny import CPU, save_tiny_best
from tests.unit.conftest import params_section

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bits_pack_and_unpack_to_the_same_mask():
    mask = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0)) > 0.6  # 105 bits: not a multiple of 8
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and len(packed) == 14
    assert torch.equal(unpack_bits(packed, mask.numel()).view(mask.shape), mask)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_the_stated_sparsity(scope):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.Linear(10, 3))
    apply_pruning(model, 0.8, scope)
    make_permanent(model)
    assert sparsity(model) == pytest.approx(0.8, abs=0.005)
    if scope == "layer":
        assert all((m.weight == 0).float().mean() == pytest.approx(0.8, abs=0.02) for m in model
                   if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert not any(hasattr(m, "weight_orig") or m._forward_pre_hooks for m in model)  # permanent: no mask left


def test_the_sparse_encoding_round_trips_and_is_smaller_than_dense(tmp_path: Path):
    weight = torch.randn(64, 64)
    weight[torch.rand(64, 64) < 0.8] = 0
    state = {"w": weight, "b": torch.randn(64)}
    encoded, shapes = encode(state, ["w"])
    assert torch.equal(decode(encoded, shapes)["w"], weight)
    save_file(state, str(tmp_path / "dense.safetensors"))
    save_file(encoded, str(tmp_path / "sparse.safetensors"))
    dense, sparse = ((tmp_path / f"{n}.safetensors").stat().st_size for n in ("dense", "sparse"))
    assert sparse < 0.35 * dense  # (0.2 * 4 + 1/8) / 4 bytes per weight, plus the header
    encoded["w" + MASK] = pack_bits(weight == 0)  # a damaged file: the mask no longer matches the values
    with pytest.raises(ValueError, match="w: its bitmask marks"):
        decode(encoded, shapes)


def test_a_pruned_model_keeps_its_zeros_through_fine_tuning_and_after_reload(tmp_path: Path):
    splits, spec = save_tiny_best(tmp_path / "best")
    teacher, _ = load_variant(tmp_path / "best")
    before = copy.deepcopy(teacher.model.state_dict())
    cfg = params_section("compress", prune={"epochs": 1, "scope": "global"})
    model, meta = pruned(teacher, splits, 0.5, cfg, tmp_path / "best", CPU)
    assert meta["sparsity"] >= 0.5 and meta["best_epoch"] == 1
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before.items())  # the teacher untouched
    trained = {k: v for k, v in model.model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert trained  # fine-tuning moved weights
    names = sparse_tensor_names(model.model)
    save_variant(tmp_path / "pruned", tmp_path / "best", model, spec, meta, names)
    stored = load_file(str(tmp_path / "pruned" / "model.safetensors"))
    assert all(n + MASK in stored and n not in stored for n in names)
    reloaded, _ = load_variant(tmp_path / "pruned")
    assert sparsity(reloaded.model) == meta["sparsity"]
    with torch.no_grad():
        test = splits.test
        assert torch.equal(reloaded(test.inputs, test.masks), model(test.inputs, test.masks))

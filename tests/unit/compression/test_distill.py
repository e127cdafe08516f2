"""Distillation: the loss, a smaller student started from the teacher, trained by the one loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from multimodal.compression.compress import distilled
from multimodal.compression.distill import build_student, kd_loss, spread_layers, student_spec
from multimodal.compression.variant import load_variant
from tests.unit.compression.tiny import CPU, save_tiny_best
from tests.unit.conftest import params_section

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_loss_mixes_softened_kl_and_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    student, teacher, labels = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen), torch.arange(6) % 4
    assert torch.allclose(kd_loss(student, teacher, labels, 3.0, 0.0), F.cross_entropy(student, labels))
    assert kd_loss(teacher, teacher, labels, 3.0, 1.0).abs() < 1e-6  # a student equal to its teacher: no soft loss
    kl = F.kl_div(F.log_softmax(student / 3, -1), F.softmax(teacher / 3, -1), reduction="batchmean")
    assert torch.allclose(kd_loss(student, teacher, labels, 3.0, 0.5),
                          0.5 * 9 * kl + 0.5 * F.cross_entropy(student, labels), atol=1e-6)


def test_the_student_is_smaller_and_starts_from_the_teachers_matching_tensors(tmp_path: Path):
    save_tiny_best(tmp_path / "best")
    teacher, spec = load_variant(tmp_path / "best")
    sspec = student_spec(teacher, spec, {"text": {"num_hidden_layers": 1}})
    assert sspec.feature_modalities == []  # the student runs its own text encoder
    student = build_student(teacher, sspec, spec)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    kept = student.embedder.encoders["text"].model.encoder.layer[0].attention.self.query.weight
    assert torch.equal(kept, teacher.encoders["text"].model.encoder.layer[1].attention.self.query.weight)  # the last
    assert torch.equal(student.head.weight, teacher.model.head.weight)
    with pytest.raises(ValueError, match=r"names \['audio'\], which the model has not"):
        student_spec(teacher, spec, {"audio": {"hidden_sizes": [4]}})


def test_a_shortened_transformer_takes_evenly_spread_teacher_blocks_ending_with_the_last():
    state = {f"embedder.encoders.text.model.encoder.layer.{i}.w": torch.tensor(float(i)) for i in range(6)}
    state["embedder.encoders.text.model.embeddings.w"] = torch.tensor(-1.0)
    got = spread_layers(state, {"text": 6}, {"text": 3})
    assert {k.split("layer.")[-1]: v.item() for k, v in got.items() if "layer." in k} == {"0.w": 1, "1.w": 3, "2.w": 5}
    assert got["embedder.encoders.text.model.embeddings.w"] == -1
    assert spread_layers(state, {"text": 6}, {"text": 6}) == state


def test_distillation_lowers_its_loss_and_keeps_the_best_validation_epoch(tmp_path: Path):
    splits, _ = save_tiny_best(tmp_path / "best")
    teacher, spec = load_variant(tmp_path / "best")
    cfg = params_section("compress", distill={"epochs": 3, "lr": 0.01, "encoders": {"text": {"num_hidden_layers": 1}}})
    student, sspec, meta = distilled(teacher, spec, splits, cfg, tmp_path / "best", CPU)
    assert meta["train_loss"][-1] < meta["train_loss"][0]
    assert 1 <= meta["best_epoch"] <= 3 and sspec.encoders["text"]["hf_config"]["num_hidden_layers"] == 1
    assert student.encoders == {} or len(student.encoders) == 0

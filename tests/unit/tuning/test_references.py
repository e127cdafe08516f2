"""The unimodal references: each modality's candidates (the fused knobs first, then seeded draws), the best on
validation chosen, and what a task returns written under the model's folder, never outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from multimodal.tuning.params import References
from multimodal.tuning.references import Reference, ReferenceFailed, best_candidate, candidates, write_reference


def test_a_reference_is_written_with_the_layout_its_task_saved(tmp_path: Path) -> None:
    files = {"model.safetensors": b"\x00weights", "model.json": b"{}", "encoders/audio.safetensors": b"enc"}
    write_reference(Reference("audio", files, 0.5, 3, 1.0), tmp_path / "audio")
    written = {p.relative_to(tmp_path / "audio").as_posix(): p.read_bytes()
               for p in (tmp_path / "audio").rglob("*") if p.is_file()}
    assert written == files


@pytest.mark.parametrize("name", ["../escaped.json", "/abs/model.json", "a/../../b"])
def test_a_file_outside_the_folder_is_refused_naming_the_modality(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReferenceFailed, match="the text reference returned a file outside its folder"):
        write_reference(Reference("text", {name: b"x"}, 0.5, 1, 1.0), tmp_path / "text")
    assert not (tmp_path / "escaped.json").exists()


SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "dropout": {"uniform": [0.0, 0.4]}, "weight_decay": {"choice": [0.0, 0.1]}}
BEST = {"lr": 1e-3, "dropout": 0.2, "weight_decay": 0.01, "seed": 42, "patience": 4}


def test_the_first_candidate_has_the_fused_trials_knobs_and_the_others_draw_the_space() -> None:
    drawn = candidates(BEST, SPACE, 4, seed=42, modality="audio")
    assert len(drawn) == 4 and drawn[0] == BEST
    for config in drawn[1:]:
        assert 1e-4 <= config["lr"] <= 1e-2 and 0.0 <= config["dropout"] <= 0.4 and config["weight_decay"] in (0, 0.1)
        assert {k: config[k] for k in ("seed", "patience")} == {"seed": 42, "patience": 4}  # the rest is the trial's
    assert len({c["lr"] for c in drawn}) == 4
    assert candidates(BEST, SPACE, 4, seed=42, modality="audio") == drawn  # seeded: the same run to run
    assert candidates(BEST, SPACE, 4, seed=42, modality="image") != drawn  # each modality its own draws
    assert candidates(BEST, SPACE, 1, seed=42, modality="audio") == [BEST]  # a budget of one: the fused knobs


def test_the_best_candidate_on_validation_is_the_reference_ties_to_the_first() -> None:
    found = [Reference("audio", {}, acc, 3, 1.0, i) for i, acc in enumerate([0.6, 0.8, 0.8, 0.7])]
    assert best_candidate(found).candidate == 1
    assert best_candidate(list(reversed(found))).candidate == 1


def test_a_reference_space_names_only_knobs_a_reference_searches() -> None:
    assert References(num_samples=2, space=SPACE).num_samples == 2
    with pytest.raises(ValueError, match="tune.references.space.fusion: not a knob a reference searches"):
        References(num_samples=2, space={"fusion": {"choice": ["concat"]}})
    with pytest.raises(ValueError, match="tune.references.space.lr: loguniform needs low > 0"):
        References(num_samples=2, space={"lr": {"loguniform": [0, 1]}})

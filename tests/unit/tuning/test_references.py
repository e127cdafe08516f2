"""The unimodal references' files: what a task returns is written under the model's folder, never outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from multimodal.tuning.references import Reference, ReferenceFailed, write_reference


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

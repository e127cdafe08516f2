"""Which study a run of the tune stage continues: only one whose last run was cut off (multimodal.tuning.resume)."""

from __future__ import annotations

from pathlib import Path

from multimodal.storage.io import write_json
from multimodal.tuning.resume import end_study, ended_file, fingerprint_file, prepare_study

FINGERPRINT = {"params": "p", "code": "c"}


def a_study(tmp_path: Path) -> Path:
    study = tmp_path / "results" / "tune"
    (study / "trial_00000").mkdir(parents=True)
    write_json(fingerprint_file(study), FINGERPRINT)
    return study


def test_a_study_whose_run_ended_is_not_continued(tmp_path) -> None:
    study = a_study(tmp_path)
    end_study(study, "no trial succeeded of 2")
    assert ended_file(study).read_text() == "no trial succeeded of 2\n"
    assert prepare_study(study, FINGERPRINT) is False  # same inputs, but its run ended: a fresh study
    assert not study.exists() and not ended_file(study).exists()  # the fresh study starts open
    assert fingerprint_file(study).exists()

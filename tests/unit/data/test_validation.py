"""Validation on tiny real datasets: real PNGs (Pillow), WAVs (soundfile) and text, built in temporary folders.

Great Expectations is slow to import and set up, so each dataset is validated once per module and the tests
read the shared result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from PIL import Image

from multimodal.data.profile import profile_samples
from multimodal.data.validation import ValidationResult, allowed_labels, describe_failures, validate_dataset
from tests.unit.conftest import merged, params_section

REPO = Path(__file__).resolve().parents[3]
TEXT_MAX = 50
RATE = 8000
# Small files keep the tests fast: thresholds from params, loosened to fit them.
OVERRIDES = {"modalities": {"text": {"max_chars": TEXT_MAX}, "audio": {"sample_rates": [RATE]}, "image": {"min_size": 4}}}
OPTIONS = params_section("validate", **OVERRIDES)  # the repo's thresholds, with these


def write_png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # distinct pixels per path
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_wav(path: Path, seconds: float = 0.25, rate: int = RATE, channels: int = 1, freq: float = 440) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([wave] * channels, axis=1), rate, subtype="PCM_16")
    return path


def row(
    sample_id: str, label: str = "cat", split: str = "train", image: str = "", audio: str = "", text: str = ""
) -> dict:
    return {"sample_id": sample_id, "label": label, "split": split, "image": image, "audio": audio, "text": text}


def clean_rows(root: Path) -> list[dict]:
    """Six good samples: both labels in every split; one (a real, supported case) without an image."""
    rows = []
    for i, (label, split) in enumerate([(lab, sp) for sp in ("train", "val", "test") for lab in ("cat", "dog")]):
        image = "" if i == 5 else f"img/{i}.png"
        if image:
            write_png(root / image, mode="RGB" if i == 1 else "L")
        write_wav(root / "aud" / f"{i}.wav", freq=300 + 50 * i)  # distinct bytes per file
        rows.append(row(f"s{i}", label, split, image, f"aud/{i}.wav", f"a {label}, sample {i}"))
    return rows


def broken_rows(root: Path) -> list[dict]:
    """Clean rows plus one row per defect; the sample id names the defect."""
    clean = clean_rows(root)
    good = write_png(root / "img" / "good.png")
    truncated = write_png(root / "img" / "truncated.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "aud" / "empty.wav").write_bytes(b"")
    write_png(root.parent / "outside.png")  # exists, so only the path rule can refuse it
    return [
        *clean,
        row("truncated_png", image="img/truncated.png"),
        row("zero_wav", audio="aud/empty.wav"),
        row("dotdot", image="../outside.png"),
        row("absolute", image=str(good.resolve())),
        row("missing_file", audio="aud/nope.wav"),
        row("dup", text="first"),
        row("dup", text="second"),
        row("unknown_label", label="zebra", split="test", text="a zebra"),  # not in the train labels
        row("bad_split", split="holdout", text="x"),
        row("too_long", text="y" * (TEXT_MAX + 1)),
        row("nothing"),
        row("", text="no id"),
    ]


def write_dataset(root: Path, rows: list[dict]) -> pd.DataFrame:
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, dtype=str)
    frame.to_csv(root / "manifest.csv", index=False)
    return frame


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[pd.DataFrame, Path, ValidationResult, Path]:
    root = tmp_path_factory.mktemp("clean") / "raw"
    frame = write_dataset(root, clean_rows(root))
    docs = root.parent / "docs"
    result = validate_dataset(frame, root, OPTIONS, docs_dir=docs)
    return frame, root, result, docs


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> ValidationResult:
    root = tmp_path_factory.mktemp("broken") / "raw"
    frame = write_dataset(root, broken_rows(root))
    return validate_dataset(frame, root, OPTIONS)


# ------------------------------------------------------------------------------------------ profile (no GX)


def test_profile_reads_properties_and_hashes(tmp_path):
    frame = write_dataset(tmp_path, clean_rows(tmp_path))
    profile = profile_samples(frame, tmp_path, OPTIONS)
    assert list(profile["sample_id"]) == [f"s{i}" for i in range(6)]
    first = profile.iloc[0]
    assert (first["image_width"], first["image_height"], first["image_mode"], first["image_channels"]) == (8, 6, "L", 1)
    assert (profile.iloc[1]["image_mode"], profile.iloc[1]["image_channels"]) == ("RGB", 3)
    assert (first["audio_sample_rate"], first["audio_channels"]) == (RATE, 1)
    assert first["audio_duration_s"] == pytest.approx(0.25)
    assert first["audio_peak"] == pytest.approx(0.5, abs=1e-3)
    assert first["audio_clipping"] == 0.0 and 0.0 <= first["audio_silence"] < 0.05
    assert first["image_sha256"] == hashlib.sha256((tmp_path / "img/0.png").read_bytes()).hexdigest()
    assert first["text_sha256"] == hashlib.sha256(b"a cat, sample 0").hexdigest()
    assert (first["text_chars"], first["text_words"], first["modalities_present"]) == (15, 4, 3)
    assert first["utf8"] and first["utf8_error"] == ""
    no_image = profile.iloc[5]
    assert not no_image["image_present"] and not no_image["image_decodes"] and no_image["image_error"] == ""
    assert pd.isna(no_image["image_width"]) and pd.isna(no_image["image_sha256"])  # nulls: range checks skip them
    assert no_image["modalities_present"] == 2
    assert profile["group_splits"].isna().all()  # no group column: nothing to leak


def test_profile_measures_silence_and_clipping(tmp_path):
    rate = 1000
    wave = np.concatenate([np.zeros(500), np.full(250, 1.0), 0.5 * np.ones(250)])
    sf.write(tmp_path / "a.wav", wave, rate, subtype="FLOAT")
    frame = pd.DataFrame([row("a", audio="a.wav")], dtype=str)
    first = profile_samples(frame, tmp_path, OPTIONS).iloc[0]
    assert first["audio_silence"] == pytest.approx(0.5) and first["audio_clipping"] == pytest.approx(0.25)
    assert first["audio_peak"] == pytest.approx(1.0)


def test_profile_turns_bad_files_into_errors_not_tracebacks(tmp_path):
    frame = write_dataset(tmp_path / "raw", broken_rows(tmp_path / "raw"))
    profile = profile_samples(frame, tmp_path / "raw", OPTIONS).set_index("sample_id", drop=False)
    assert "truncated" in profile.loc["truncated_png", "image_error"]
    assert profile.loc["zero_wav", "audio_error"] == "empty file (0 bytes)"
    assert "escapes" in profile.loc["dotdot", "image_error"] and not profile.loc["dotdot", "image_exists"]
    assert "absolute" in profile.loc["absolute", "image_error"]
    assert "not found" in profile.loc["missing_file", "audio_error"]


def test_labels_come_from_params_or_the_train_split():
    frame = pd.DataFrame({"label": ["10", "2", "2", "99"], "split": ["train", "train", "val", "test"]})
    assert allowed_labels(frame, None) == ["2", "10"]  # integer-like labels sort numerically
    assert allowed_labels(frame, ["b", "a"]) == ["b", "a"]  # an explicit list keeps its order


def test_importing_validation_does_not_import_gx():
    code = "import sys, multimodal.data.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_params_range_errors():
    with pytest.raises(ValueError, match=r"min_size \(100\) exceeds max_size \(10\)"):
        params_section("validate", modalities={"image": {"min_size": 100, "max_size": 10}})
    with pytest.raises(ValueError, match="on_invalid"):
        params_section("validate", on_invalid="drop")
    with pytest.raises(ValueError, match="channels\n.*an empty list"):
        params_section("validate", modalities={"audio": {"channels": []}})


# ------------------------------------------------------------------------------------------ the GX suites


def test_clean_dataset_passes(clean):
    _, _, result, docs = clean
    assert result.success, (result.failing_rows, result.dataset_failures)
    assert result.failing_rows == [] and result.dataset_failures == [] and all(c.success for c in result.checks)
    assert result.labels == ["cat", "dog"]
    names = {c.name for c in result.checks}
    assert {"sample_id_unique", "label_in_set", "image_unique_content", "audio_sample_rate", "audio_channels",
            "audio_duration", "text_length", "group_in_one_split", "rows_present", "classes_in_test"} <= names
    report = result.to_report()
    assert report["rows"] == report["valid_rows"] == 6 and report["invalid_rows"] == 0
    json.dumps(report)  # JSON-ready


def test_clean_dataset_writes_data_docs(clean):
    *_, docs = clean
    assert (docs / "index.html").is_file()
    pages = list(docs.rglob("*.html"))
    assert len(pages) >= 5  # index, two suites, two validation results
    assert not any("dataContextId" in p.read_text() for p in pages)  # the tracking logo is replaced
    for suite in ("sample_checks", "dataset_checks"):
        assert json.loads((docs / f"gx_{suite}.json").read_text())["success"] is True
        assert (docs / "expectations" / f"{suite}.html").is_file()


@pytest.mark.parametrize(
    ("sample_id", "column", "reason", "file"),
    [
        ("truncated_png", "image", "truncated", "img/truncated.png"),
        ("zero_wav", "audio", "empty file", "aud/empty.wav"),
        ("dotdot", "image", "escapes", "../outside.png"),
        ("absolute", "image", "absolute", None),
        ("missing_file", "audio", "not found", "aud/nope.wav"),
        ("dup", "sample_id", "duplicate sample_id", ""),
        ("unknown_label", "label", "'zebra' not in the allowed labels", ""),
        ("bad_split", "split", "'holdout'", ""),
        ("too_long", "text", f"{TEXT_MAX + 1} characters", ""),
        ("nothing", "modalities_present", "no modality present", ""),
        ("", "sample_id", "empty sample_id", ""),
    ],
)
def test_each_defect_is_a_named_failing_row(broken, sample_id, column, reason, file):
    assert not broken.success
    hits = [f for f in broken.failing_rows if f.sample_id == sample_id and f.column == column]
    assert hits, f"no failing row for {sample_id}/{column}: {broken.failing_rows}"
    assert reason in hits[0].reason
    if file is not None:
        assert hits[0].file == file


def test_failing_rows_point_at_manifest_rows(broken):
    dup_rows = sorted(f.row for f in broken.failing_rows if f.sample_id == "dup")
    assert dup_rows == [13, 14]  # both copies, as a spreadsheet numbers them (header = row 1)
    dup = next(f for f in broken.failing_rows if f.row == 13)
    assert "'dup (row 14)'" in dup.reason  # names the other copy
    clean_ids = {f"s{i}" for i in range(6)}
    assert not clean_ids & {f.sample_id for f in broken.failing_rows}
    assert broken.n_failing_rows == 12
    assert broken.dataset_failures == []  # the clean rows still cover every class in every split
    failed = {c.name for c in broken.failed_checks}
    assert {"image_decodes", "audio_decodes", "sample_id_unique", "label_in_set"} <= failed


def test_failure_summary_is_capped(broken):
    text = describe_failures(broken, limit=3)
    assert text.count("  row ") == 3
    assert text.endswith(f"... and {len(broken.failing_rows) - 3} more problem(s) on 12 failing row(s) in all")


# ------------------------------------------------------------------------------------------ the DVC stage


def write_params(cwd: Path, **validate) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["validate"] = merged(merged(params["validate"], OVERRIDES), validate)
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", cwd / "dvc.yaml")  # the stage reads the params keys it declares there


def test_stage_writes_outputs_then_fails_without_leaving_any(tmp_path, monkeypatch):
    from stages import validate as stage

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    raw = tmp_path / "data" / "raw"
    write_dataset(raw, clean_rows(raw))

    stage.main()
    out, docs = tmp_path / "data" / "validated", tmp_path / "data" / "validation_docs"
    outputs = {"manifest.csv", "quarantine.csv", "labels.json", "profile.csv", "report.json"}
    assert {p.name for p in out.iterdir()} == outputs
    assert (out / "manifest.csv").read_bytes() == (raw / "manifest.csv").read_bytes()
    assert len(pd.read_csv(out / "quarantine.csv")) == 0
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog"]
    assert pd.read_csv(out / "profile.csv")["valid"].tolist() == [True] * 6
    assert (docs / "index.html").is_file() and (docs / "gx_sample_checks.json").is_file()
    assert json.loads((out / "report.json").read_text())["docs"] == "data/validation_docs/index.html"
    metrics = json.loads((tmp_path / "metrics" / "validate.json").read_text())
    assert metrics["rows"] == metrics["valid_rows"] == 6 and metrics["quarantined_rows"] == 0
    assert metrics["failed_checks"] == 0 and set(metrics["checks"].values()) == {0}
    assert metrics["present"] == {"image": 5, "audio": 6, "text": 6}

    write_dataset(raw, broken_rows(raw))
    with pytest.raises(SystemExit) as failure:
        stage.main()
    message = str(failure.value)
    assert "truncated_png" in message and "img/truncated.png" in message and "nothing" in message
    assert "validate.on_invalid: quarantine" in message  # the way out is named
    assert not out.exists() and not docs.exists()  # neither a partial folder nor the stale one from the passing run
    assert not list(out.parent.glob(".validat*"))  # no temporary folder left either
    assert not (tmp_path / "metrics" / "validate.json").exists()

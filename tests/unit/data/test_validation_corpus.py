"""A corpus of bad inputs: each one gets its own report entry (row, column, file, reason) and never a traceback.

Row-level defects live in one dataset, validated once per policy: in-process under `quarantine`, and as a real
`python -m stages.validate` subprocess under `fail` (started first, so it overlaps the in-process work).
Dataset-level failures (a class missing from a split, zero rows, a missing column) get small datasets of their
own. Bring-your-own-data rejections at ingest need no Great Expectations at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from flows.workspace import project_env
from multimodal.data.manifest import MANIFEST_NAME, ManifestError, read_manifest, write_manifest
from multimodal.data.validation import ValidationResult, validate_dataset
from stages.ingest import ingest
from stages.validate import QUARANTINE_NAME, ValidationFailed, apply_policy, validate_into
from tests.unit.conftest import merged, params_section
from tests.unit.data.test_validation import OPTIONS, OVERRIDES, RATE, TEXT_MAX, clean_rows, row, write_png, write_wav

REPO = Path(__file__).resolve().parents[3]
MAX_LISTED = 5
LATIN1 = "caf\udce9 au lait"  # the byte 0xe9 (latin-1 "é") as read with surrogateescape

# sample_id -> (checks it must fail, manifest column, words of the reason, file cell or None)
DEFECTS: dict[str, tuple[set[str], str, str, str | None]] = {
    "truncated_png": ({"image_decodes"}, "image", "truncated", "img/truncated.png"),
    "zero_wav": ({"audio_decodes"}, "audio", "empty file (0 bytes)", "aud/zero.wav"),
    "wrong_rate": ({"audio_sample_rate"}, "audio", f"22050 Hz is not one of [{RATE}]", "aud/rate.wav"),
    "stereo": ({"audio_channels"}, "audio", "2 channels; allowed [1]", "aud/stereo.wav"),
    "latin1": ({"utf8"}, "text", "'text' is not valid UTF-8 (byte 0xe9 at character 3)", None),
    "blank_text": ({"text_not_blank"}, "text", "text is blank", None),
    "long_text": ({"text_length"}, "text", f"{TEXT_MAX + 1} characters; allowed 1..{TEXT_MAX}", None),
    "missing_label": ({"label_present"}, "label", "missing label", None),
    "unknown_label": ({"label_in_set"}, "label", "label 'zebra' not in the allowed labels ['cat', 'dog']", None),
    "dup_id": ({"sample_id_unique"}, "sample_id", "duplicate sample_id", None),
    "dup_content_a": ({"image_unique_content"}, "image", "image bytes are also in ['dup_content_b", "img/dupA.png"),
    "dup_content_b": ({"image_unique_content"}, "image", "image bytes are also in ['dup_content_a", "img/dupB.png"),
    "dotdot": ({"image_decodes"}, "image", "escapes the dataset folder", "../outside.png"),
    "absolute": ({"image_decodes"}, "image", "is absolute", None),
    "missing_file": ({"audio_decodes"}, "audio", "file not found", "aud/nope.wav"),
    "directory": ({"image_decodes"}, "image", "not a regular file", "img"),
    "tiny_image": ({"image_width", "image_height"}, "image", "is 2 px; allowed 4..8192", "img/tiny.png"),
    "short_audio": ({"audio_duration"}, "audio", "duration 0.050 s; allowed 0.1..60 s", "aud/short.wav"),
    "clipped_audio": ({"audio_clipping"}, "audio", "of samples clipped; allowed 1.0%", "aud/clipped.wav"),
    "silent_audio": ({"audio_silence"}, "audio", "100.0% of samples silent; allowed 99.0%", "aud/silent.wav"),
    "no_modality": ({"any_modality"}, "modalities_present", "no modality present", None),
}
VALID_EXTRA = ("empty_text_cell",)  # an empty text cell means "no text": a supported case, not a defect
# One group in train and test: evaluation on a seen group is worth a warning, but the rows are valid.
WARNED = ("leak_train", "leak_test")
LEAK_WARNING = "split 'test' shares 1 group(s) with 'train' (1 test rows): ['spk1']"


def _wave(path: Path, wave: np.ndarray, rate: int = RATE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate, subtype="PCM_16")
    return path.name


def write_defect_files(root: Path) -> None:
    """One file per file-level defect, next to the clean files `clean_rows` writes."""
    truncated = write_png(root / "img" / "truncated.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "aud" / "zero.wav").write_bytes(b"")
    write_wav(root / "aud" / "rate.wav", rate=22050)
    write_wav(root / "aud" / "stereo.wav", channels=2)
    write_png(root / "img" / "dupA.png", size=(9, 9))
    shutil.copyfile(root / "img" / "dupA.png", root / "img" / "dupB.png")  # same bytes, another path
    write_png(root.parent / "outside.png")  # exists, so only the path rule can refuse it
    write_png(root / "img" / "tiny.png", size=(2, 2))
    write_wav(root / "aud" / "short.wav", seconds=0.05)
    t = np.arange(RATE // 4) / RATE
    _wave(root / "aud" / "clipped.wav", np.clip(1.5 * np.sin(2 * np.pi * 440 * t), -1, 1))
    _wave(root / "aud" / "silent.wav", np.zeros(RATE // 4))
    write_png(root / "img" / "extra.png", size=(7, 7))


def corpus_rows(root: Path) -> list[dict]:
    """Clean rows (both labels in every split) plus one row per defect, named by its sample id."""
    clean = [{**r, "group": ""} for r in clean_rows(root)]
    write_defect_files(root)
    absolute = str((root / "img" / "0.png").resolve())
    defects = [
        row("truncated_png", image="img/truncated.png"),
        row("zero_wav", audio="aud/zero.wav"),
        row("wrong_rate", audio="aud/rate.wav"),
        row("stereo", audio="aud/stereo.wav"),
        row("latin1", text=LATIN1),
        row("blank_text", text="   "),
        row("long_text", text="y" * (TEXT_MAX + 1)),
        row("missing_label", label="", text="no label"),
        row("unknown_label", label="zebra", split="test", text="a zebra"),  # not among the train labels
        row("dup_id", text="first"),
        row("dup_id", text="second"),
        row("dup_content_a", image="img/dupA.png"),
        row("dup_content_b", image="img/dupB.png"),
        row("dotdot", image="../outside.png"),
        row("absolute", image=absolute),
        row("missing_file", audio="aud/nope.wav"),
        row("directory", image="img"),
        {**row("leak_train", text="spoken by spk1"), "group": "spk1"},
        {**row("leak_test", split="test", text="spoken by spk1 too"), "group": "spk1"},
        row("tiny_image", image="img/tiny.png"),
        row("short_audio", audio="aud/short.wav"),
        row("clipped_audio", audio="aud/clipped.wav"),
        row("silent_audio", audio="aud/silent.wav"),
        row("no_modality"),
        row("empty_text_cell", image="img/extra.png", text=""),
    ]
    return clean + [{"group": "", **r} for r in defects]


def write_raw(root: Path, rows: list[dict]) -> pd.DataFrame:
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, dtype=object)  # object: pandas' Arrow strings cannot hold the latin-1 surrogate
    write_manifest(frame, root / MANIFEST_NAME)  # writes the latin-1 byte back as the byte it was
    return read_manifest(root / MANIFEST_NAME, errors="surrogateescape")


def make_project(folder: Path, **validate) -> Path:
    """A folder with params.yaml (validate section with OVERRIDES + `validate`) and data/raw holding the corpus."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["validate"] = merged(merged(params["validate"], OVERRIDES), validate)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")  # the stage reads the params keys it declares there
    raw = folder / "data" / "raw"
    write_raw(raw, corpus_rows(raw))
    return folder


def read_quarantine(path: Path) -> pd.DataFrame:
    """The quarantine table: manifest columns plus manifest_row/checks/reasons, bytes as the manifest held them."""
    return pd.read_csv(path, dtype=object, keep_default_na=False, encoding_errors="surrogateescape")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def fail_run(tmp_path_factory) -> Iterator[dict]:
    """`python -m stages.validate` under `fail`, as DVC runs it; started first so it overlaps the other tests."""
    project = make_project(tmp_path_factory.mktemp("fail"), on_invalid="fail", max_listed=MAX_LISTED)
    env = {**project_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stages.validate"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    state: dict = {"proc": proc, "project": project}
    yield state
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[pd.DataFrame, ValidationResult]:
    root = tmp_path_factory.mktemp("corpus") / "raw"
    frame = write_raw(root, corpus_rows(root))
    return frame, validate_dataset(frame, root, OPTIONS)


@pytest.fixture(scope="module")
def quarantine_run(tmp_path_factory) -> Path:
    """The stage, in-process, under `quarantine`: returns the project folder holding its outputs."""
    from stages import validate as stage

    project = make_project(tmp_path_factory.mktemp("quarantine"), on_invalid="quarantine")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        stage.main()
    return project


@pytest.fixture(scope="module")
def dataset_level(tmp_path_factory) -> ValidationResult:
    """Three labels; test has a valid `cat`, no `dog` at all, and `bird` only in a row that fails (truncated)."""
    root = tmp_path_factory.mktemp("classes") / "raw"
    truncated = write_png(root / "bad.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:100])
    rows = [row(f"{label}_{split}", label, split, text=f"a {label}") for label in ("cat", "dog", "bird")
            for split in ("train", "val")]
    rows += [row("cat_test", "cat", "test", text="a cat"), row("bird_test", "bird", "test", image="bad.png")]
    frame = write_raw(root, rows)
    return validate_dataset(frame, root, OPTIONS)


# --------------------------------------------------------------------------------------------- row-level corpus


@pytest.mark.parametrize("sample_id", list(DEFECTS))
def test_each_defect_has_its_own_report_entry(corpus, sample_id):
    _, result = corpus
    checks, column, reason, file = DEFECTS[sample_id]
    hits = [f for f in result.failing_rows if f.sample_id == sample_id]
    assert {f.check for f in hits} == checks, hits  # exactly its own checks: no collateral findings
    entry = hits[0]
    assert entry.column == column and reason in entry.reason, entry
    if file is not None:
        assert entry.file == file


def test_clean_rows_and_an_empty_text_cell_are_not_flagged(corpus):
    frame, result = corpus
    flagged = {f.sample_id for f in result.failing_rows}
    assert flagged == set(DEFECTS)
    assert result.n_failing_rows == len(frame) - 6 - len(VALID_EXTRA) - len(WARNED)
    assert result.dataset_failures == []  # the clean rows still cover every class in every split


def test_a_group_in_train_and_test_is_a_warning_not_a_failure(corpus):
    _, result = corpus
    assert len(result.warnings) == 1 and result.warnings[0].startswith(LEAK_WARNING), result.warnings
    leak = next(c for c in result.checks if c.name == "group_in_one_split")
    assert (leak.scope, leak.success, leak.count) == ("warning", False, 2)
    assert leak not in result.failed_checks
    assert result.to_report()["warnings"] == result.warnings


def test_row_numbers_match_the_manifest_as_a_spreadsheet_shows_it(corpus):
    frame, result = corpus
    for entry in result.failing_rows:
        assert frame.iloc[entry.row - 2]["sample_id"] == entry.sample_id
    dup_rows = sorted(f.row for f in result.failing_rows if f.sample_id == "dup_id")
    assert dup_rows == [17, 18]


# --------------------------------------------------------------------------------------------- policies


def test_quarantine_conserves_every_row(quarantine_run, corpus):
    frame, _ = corpus
    out = quarantine_run / "data" / "validated"
    valid = read_manifest(out / MANIFEST_NAME)  # strict UTF-8: bad bytes went to quarantine
    quarantined = read_quarantine(out / QUARANTINE_NAME)
    metrics = json.loads((quarantine_run / "metrics" / "validate.json").read_text())
    assert len(valid) + len(quarantined) == len(frame) == metrics["rows"]
    assert (metrics["valid_rows"], metrics["quarantined_rows"]) == (len(valid), len(quarantined))
    assert set(valid["sample_id"]) == {f"s{i}" for i in range(6)} | set(VALID_EXTRA) | set(WARNED)
    assert set(quarantined["sample_id"]) == set(DEFECTS)
    report = json.loads((out / "report.json").read_text())
    assert report["on_invalid"] == "quarantine" and report["quarantined_rows"] == len(quarantined)
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith(LEAK_WARNING)


def test_quarantine_table_keeps_rows_as_read_with_reasons(quarantine_run):
    frame = read_manifest(quarantine_run / "data" / "raw" / MANIFEST_NAME, errors="surrogateescape")
    out = quarantine_run / "data" / "validated"
    quarantined = read_quarantine(out / QUARANTINE_NAME)
    assert list(quarantined.columns) == ["manifest_row", *frame.columns, "checks", "reasons"]
    for entry in quarantined.to_dict(orient="records"):
        original = frame.iloc[int(entry["manifest_row"]) - 2].tolist()
        assert [entry[c] for c in frame.columns] == original  # nothing altered, nothing lost
        checks = DEFECTS[entry["sample_id"]][0]
        assert set(entry["checks"].split("; ")) == checks and entry["reasons"]
    assert b"caf\xe9 au lait" in (out / QUARANTINE_NAME).read_bytes()  # the original byte, not a replacement


def test_quarantine_metrics_count_each_check(quarantine_run):
    metrics = json.loads((quarantine_run / "metrics" / "validate.json").read_text())
    checks = metrics["checks"]
    assert checks["sample_id_unique"] == 2 and checks["image_unique_content"] == 2
    assert checks["group_in_one_split"] == 2 and checks["audio_channels"] == 1 and checks["utf8"] == 1
    assert checks["classes_in_test"] == 0 and checks["rows_present"] == 0
    assert metrics["failed_checks"] == len(set().union(*(checks for checks, *_ in DEFECTS.values())))
    docs = quarantine_run / "data" / "validation_docs"
    assert (docs / "index.html").is_file() and len(list((docs / "validations").rglob("*.html"))) == 2


# --------------------------------------------------------------------------------------------- dataset level


@pytest.mark.parametrize("policy", ["fail", "quarantine"])
def test_class_missing_from_a_split_fails_under_both_policies(dataset_level, policy, tmp_path):
    assert dataset_level.dataset_failures == ["split 'test' has no valid row of 2 class(es): ['bird', 'dog']"]
    frame = pd.DataFrame({"sample_id": dataset_level.profile["sample_id"]})
    with pytest.raises(ValidationFailed) as failure:
        apply_policy(frame, dataset_level, OPTIONS.model_copy(update={"on_invalid": policy}), tmp_path / "m.csv")
    message = str(failure.value)
    assert "dataset: split 'test' has no valid row" in message and "bird_test" in message
    assert ("quarantining rows cannot fix them" in message) == (policy == "quarantine")


@pytest.fixture(scope="module")
def zero_rows(tmp_path_factory) -> tuple[pd.DataFrame, ValidationResult, Path]:
    raw = tmp_path_factory.mktemp("zero") / "raw"
    raw.mkdir()
    (raw / MANIFEST_NAME).write_text("sample_id,label,split,image,audio,text\n")
    frame = read_manifest(raw / MANIFEST_NAME)
    return frame, validate_dataset(frame, raw, OPTIONS), raw / MANIFEST_NAME


@pytest.mark.parametrize("policy", ["fail", "quarantine"])
def test_zero_rows_fail_under_both_policies(zero_rows, policy):
    frame, result, manifest = zero_rows
    assert result.dataset_failures == ["the manifest has zero rows"]
    with pytest.raises(ValidationFailed, match="dataset: the manifest has zero rows"):
        apply_policy(frame, result, OPTIONS.model_copy(update={"on_invalid": policy}), manifest)


def test_dataset_failure_under_quarantine_leaves_no_output(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_raw(raw, [row("only", "cat", "train", text="one row, no val or test split")])
    target = tmp_path / "data" / "validated"
    options = OPTIONS.model_copy(update={"on_invalid": "quarantine", "docs_dir": tmp_path / "data" / "docs"})
    with pytest.raises(ValidationFailed, match="split 'val' has no valid row of 1 class"):
        validate_into(raw, target, options)
    assert not target.exists() and not options.docs_dir.exists() and not list(target.parent.glob(".*"))


def test_manifest_missing_a_column_cannot_start(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / MANIFEST_NAME).write_text("sample_id,image\na,img/a.png\n")
    with pytest.raises(ValidationFailed, match=r"validation cannot start: .*lacks required column\(s\) \['label'\]"):
        validate_into(raw, tmp_path / "validated", OPTIONS)
    assert not (tmp_path / "validated").exists()


# --------------------------------------------------------------------------------------------- ingest (no GX)


def user_folder(root: Path, rows: list[dict] | None = None) -> Path:
    """A user's dataset: manifest.csv + two PNGs; `rows` replaces the default rows."""
    write_png(root / "img" / "a.png")
    write_png(root / "img" / "b.png", size=(9, 9))
    rows = rows or [{"sample_id": "a", "label": "cat", "image": "img/a.png"},
                    {"sample_id": "b", "label": "dog", "image": "img/b.png"}]
    write_manifest(pd.DataFrame(rows, dtype=object).assign(split="train"), root / MANIFEST_NAME)
    return root / MANIFEST_NAME


def ingest_from(manifest: Path, out: Path) -> pd.DataFrame:
    return ingest(params_section("ingest", dataset=manifest.parent, manifest=manifest.name), out, seed=0)


def _with_cell(manifest: Path, column: str, value: str) -> None:
    frame = read_manifest(manifest)
    frame.loc[1, column] = value  # manifest row 3
    write_manifest(frame, manifest)


def _link_out(manifest: Path) -> None:
    (manifest.parent / "img" / "b.png").unlink()
    (manifest.parent / "img" / "b.png").symlink_to(manifest.parent.parent / "secret.png")


def _dir_link_out(manifest: Path) -> None:
    (manifest.parent / "linked").symlink_to(manifest.parent.parent, target_is_directory=True)
    _with_cell(manifest, "image", "linked/secret.png")


def _make_dir(manifest: Path) -> None:
    manifest.unlink()
    manifest.mkdir()


# name -> (how the user's folder is broken, what the message must say)
BAD_USER_DATA = {
    "missing-column": (lambda m: write_manifest(read_manifest(m).drop(columns=["label"]), m),
                       r"lacks required column\(s\) \['label'\]"),
    "unknown-modality": (lambda m: write_manifest(read_manifest(m).assign(depth="d.exr"), m),
                         r"unknown column\(s\) \['depth'\]"),
    "absolute": (lambda m: _with_cell(m, "image", "/etc/hostname"), r"manifest row 3, column 'image': .*is absolute"),
    "dotdot": (lambda m: _with_cell(m, "image", "img/../../secret.png"), r"manifest row 3, .*escapes the dataset"),
    "re-entry": (lambda m: _with_cell(m, "image", "img/../../user/img/b.png"), r"row 3, .*escapes the dataset"),
    "symlink-out": (_link_out, r"manifest row 3, column 'image': .*escapes the dataset folder .* through a symlink"),
    "dir-symlink-out": (_dir_link_out, r"manifest row 3, column 'image': .*through a symlink"),
    "empty-file": (lambda m: m.write_bytes(b""), r"cannot read manifest .*"),
    "no-file": (lambda m: m.unlink(), r"cannot read manifest .*"),
    "a-directory": (_make_dir, r"cannot read manifest .*"),
}


@pytest.mark.parametrize("case", list(BAD_USER_DATA))
def test_ingest_rejects_bad_user_manifests_by_name(tmp_path, case):
    edit, message = BAD_USER_DATA[case]
    write_png(tmp_path / "secret.png")
    manifest = user_folder(tmp_path / "user")
    edit(manifest)
    with pytest.raises(ManifestError, match=message):
        ingest_from(manifest, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".raw.*"))


def test_ingest_keeps_non_utf8_cells_for_validate_to_report(tmp_path):
    rows = [{"sample_id": "a", "label": "cat", "image": "img/a.png", "text": LATIN1}]
    manifest = user_folder(tmp_path / "user", rows)
    ingest_from(manifest, tmp_path / "raw")
    assert b"caf\xe9 au lait" in (tmp_path / "raw" / MANIFEST_NAME).read_bytes()
    with pytest.raises(ManifestError, match="not UTF-8.*save it as UTF-8"):  # strict readers refuse it, clearly
        read_manifest(tmp_path / "raw" / MANIFEST_NAME)


def test_ingest_copies_an_inside_symlink_to_the_path_the_manifest_names(tmp_path):
    manifest = user_folder(tmp_path / "user")
    blob = tmp_path / "user" / "blobs" / "b.png"
    blob.parent.mkdir()
    os.replace(tmp_path / "user" / "img" / "b.png", blob)
    (tmp_path / "user" / "img" / "b.png").symlink_to(blob)
    ingest_from(manifest, tmp_path / "raw")
    assert (tmp_path / "raw" / "img" / "b.png").read_bytes() == blob.read_bytes()
    assert not (tmp_path / "raw" / "blobs").exists()


# --------------------------------------------------------------------------------------------- fail, for real


def test_fail_policy_names_rows_and_exits_without_traceback_or_output(fail_run, corpus):
    # Last in the file: the subprocess started with the module has had the other tests' time to finish.
    _, result = corpus
    out, err = fail_run["proc"].communicate(timeout=300)
    assert fail_run["proc"].returncode == 1
    assert "Traceback" not in err and "Traceback" not in out
    first = result.failing_rows[0]
    assert f"row {first.row} sample {first.sample_id!r} [{first.column}]" in err
    assert "file 'img/truncated.png'" in err and "truncated" in err  # row, file and reason
    extra = len(result.failing_rows) - MAX_LISTED
    assert f"... and {extra} more problem(s) on {result.n_failing_rows} failing row(s) in all" in err
    assert err.count("\n  row ") == MAX_LISTED  # first N, then a count
    assert "validate.on_invalid: quarantine" in err
    assert f"validate: {LEAK_WARNING}" in err  # the group warning reaches the log too
    project = fail_run["project"]
    assert not (project / "data" / "validated").exists() and not (project / "data" / "validation_docs").exists()
    assert not list((project / "data").glob(".validat*"))
    assert not (project / "metrics" / "validate.json").exists()

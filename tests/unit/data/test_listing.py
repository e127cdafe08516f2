"""The listings `ingest` writes beside the files (what `validate` and `preprocess@<m>` depend on in dvc.yaml)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from multimodal.data.listing import (
    LISTING_DIR,
    listing_path,
    listings,
    read_listing,
    reserved,
    write_listings,
)
from multimodal.data.manifest import MANIFEST_NAME, ManifestError, read_manifest
from multimodal.modalities import names
from stages.ingest import ingest
from tests.unit.data.test_ingest import cfg_for, user_dataset, write_png, write_wav


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def small_dataset(root: Path) -> pd.DataFrame:
    write_png(root / "images/a.png", 1)
    write_png(root / "images/b.png", 2)
    write_wav(root / "audio/a.wav", 3)
    return pd.DataFrame({
        "sample_id": ["1", "2", "3", "4"],
        "label": ["x", "y", "x", "y"],
        # Row 3 names row 1's file again, not normalised; row 4's file is missing (validate reports it).
        "image": ["images/a.png", "images/b.png", "images/./a.png", "images/gone.png"],
        "audio": ["audio/a.wav", "", "", ""],
        "text": ["one", "two", "three", "four"],
    })


def test_each_modality_lists_its_files_md5_under_their_normalised_paths(tmp_path):
    frame = small_dataset(tmp_path)
    found = listings(frame, tmp_path)
    assert set(found) == set(names())  # every modality has one, so every preprocess@<m> finds its dependency
    assert found["image"] == {"images/a.png": md5(tmp_path / "images/a.png"),
                              "images/b.png": md5(tmp_path / "images/b.png")}
    assert found["audio"] == {"audio/a.wav": md5(tmp_path / "audio/a.wav")}
    assert found["text"] == {}  # inline: the manifest holds it
    assert found["video"] == {}  # a column the manifest lacks


def test_the_same_files_give_the_same_bytes_and_a_changed_file_changes_only_its_modality(tmp_path):
    frame = small_dataset(tmp_path)
    write_listings(frame, tmp_path)
    before = {m: listing_path(tmp_path, m).read_bytes() for m in names()}
    assert before["image"].decode().splitlines() == [
        "{", f'"images/a.png": "{md5(tmp_path / "images/a.png")}",',
        f'"images/b.png": "{md5(tmp_path / "images/b.png")}"', "}"]  # sorted, one a line
    write_listings(frame.iloc[::-1], tmp_path)  # row order does not matter
    assert {m: listing_path(tmp_path, m).read_bytes() for m in names()} == before
    assert read_listing(tmp_path, "image") == listings(frame, tmp_path)["image"]

    write_png(tmp_path / "images/b.png", 99)  # new bytes, same path
    write_listings(frame, tmp_path)
    changed = {m for m in names() if listing_path(tmp_path, m).read_bytes() != before[m]}
    assert changed == {"image"}


def test_ingest_lists_what_it_placed(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    out = tmp_path / "raw"
    ingest(cfg_for(manifest), out, seed=0)
    frame = read_manifest(out / MANIFEST_NAME)
    for modality in ("image", "audio"):
        cells = {c for c in frame[modality] if c}
        assert read_listing(out, modality) == {c: md5(out / c) for c in cells}
    assert read_listing(out, "text") == {}


@pytest.mark.parametrize("cell", [MANIFEST_NAME, f"{LISTING_DIR}/image.json", f"images/../{LISTING_DIR}/x.png"])
def test_ingest_refuses_a_file_where_it_writes_its_own(tmp_path, cell):
    root = tmp_path / "user"
    manifest = user_dataset(root)  # refused whether or not a file is there: nothing is read first
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[0, "image"] = cell  # manifest row 2
    frame.to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match=rf"row 2, column 'image'.*{re.escape(repr(cell))} cannot be copied.*rename"):
        ingest(cfg_for(manifest), tmp_path / "raw", seed=0)
    assert not (tmp_path / "raw").exists()
    assert reserved(Path("images/manifest.csv")) is None and reserved(Path("contents/x.png")) is None

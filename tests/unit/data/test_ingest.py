"""Stage `ingest` with a user manifest: real PNG/WAV/text files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from multimodal.data.listing import LISTING_DIR
from multimodal.data.manifest import MANIFEST_NAME, ManifestError, read_manifest, resolve_inside
from multimodal.data.params import Ingest
from stages.demo import build_demo
from stages.ingest import ingest
from tests.unit.conftest import params_section

N = 30  # 3 labels x 10


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def write_wav(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, 800).astype(np.float32)
    sf.write(path, wave, 8000)


def user_dataset(root: Path, *, split: list[str] | None = None) -> Path:
    """`root/manifest.csv` + nested image/audio files; some rows lack a modality."""
    rows = []
    for i in range(N):
        image = f"images/c{i % 3}/{i:03d}.png" if i % 5 else ""
        audio = f"audio/{i:03d}.wav" if i % 7 else ""
        if image:
            write_png(root / image, i)
        if audio:
            write_wav(root / audio, i)
        rows.append({"sample_id": f"{i:03d}", "label": f"l{i % 3}", "image": image, "audio": audio,
                     "text": f"sample number {i}"})
    frame = pd.DataFrame(rows)
    if split is not None:
        frame["split"] = split
    frame.to_csv(root / MANIFEST_NAME, index=False)
    return root / MANIFEST_NAME


def cfg_for(manifest: Path, **changes) -> Ingest:
    """The repo's `ingest` params for a user manifest, 0.6/0.2/0.2 split, with `changes` on top."""
    return params_section("ingest", dataset=manifest.parent, manifest=manifest.name,
                          split={"train": 0.6, "val": 0.2, "test": 0.2}, **changes)


def test_ingest_copies_files_and_assigns_splits(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    out = tmp_path / "raw"
    frame = ingest(cfg_for(manifest), out, seed=0)

    written = read_manifest(out / MANIFEST_NAME)
    assert written["sample_id"].tolist() == [f"{i:03d}" for i in range(N)]
    assert set(written["split"]) == {"train", "val", "test"}
    assert written["split"].tolist() == frame["split"].tolist()
    # Stratified: 10 per label -> 6 / 2 / 2.
    assert (pd.crosstab(written["label"], written["split"])["train"] == 6).all()
    # Every referenced file is there, at the same relative path, byte for byte.
    copied = 0
    for column in ("image", "audio"):
        for cell in written[column]:
            if cell:
                assert (out / cell).read_bytes() == (tmp_path / "user" / cell).read_bytes()
                copied += 1
    assert copied == sum(1 for i in range(N) if i % 5) + sum(1 for i in range(N) if i % 7)
    # Files are still decodable where they landed.
    with Image.open(out / "images/c1/001.png") as image:
        assert image.size == (8, 8)
    assert sf.info(str(out / "audio/001.wav")).samplerate == 8000
    # Text stays in the manifest; nothing but the manifest, the copied trees and their listings is written.
    assert written.loc[4, "text"] == "sample number 4"
    assert sorted(p.name for p in out.iterdir()) == [LISTING_DIR, "audio", "images", MANIFEST_NAME]
    assert not list(tmp_path.glob(".raw.*"))  # no temporary folder left beside the output


def test_ingest_is_deterministic_for_a_seed(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    first = ingest(cfg_for(manifest), tmp_path / "a", seed=5)["split"].tolist()
    second = ingest(cfg_for(manifest), tmp_path / "b", seed=5)["split"].tolist()
    assert first == second


def test_ingest_keeps_an_existing_split(tmp_path):
    given = ["test"] * 10 + ["val"] * 5 + ["train"] * 15
    manifest = user_dataset(tmp_path / "user", split=given)
    ingest(cfg_for(manifest), tmp_path / "raw", seed=0)
    assert read_manifest(tmp_path / "raw" / MANIFEST_NAME)["split"].tolist() == given


def test_ingest_rejects_unknown_split_values(tmp_path):
    given = ["train"] * 29 + ["holdout"]
    manifest = user_dataset(tmp_path / "user", split=given)
    with pytest.raises(ManifestError, match=r"rows \[31\].*outside"):
        ingest(cfg_for(manifest), tmp_path / "raw", seed=0)
    assert not (tmp_path / "raw").exists()


def test_partially_filled_split_is_rejected(tmp_path):
    given = ["train"] * 28 + ["", ""]
    manifest = user_dataset(tmp_path / "user", split=given)
    with pytest.raises(ManifestError, match=r"empty for rows \[30, 31\]"):
        ingest(cfg_for(manifest), tmp_path / "raw", seed=0)
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.glob(".raw.*"))


def test_escaping_path_is_refused_with_its_row(tmp_path):
    root = tmp_path / "user"
    manifest = user_dataset(root)
    write_png(tmp_path / "outside.png", 99)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[3, "image"] = "../outside.png"  # manifest row 5 (header is row 1)
    frame.to_csv(manifest, index=False)
    out = tmp_path / "raw"
    with pytest.raises(ManifestError, match=r"row 5, column 'image'.*escapes"):
        ingest(cfg_for(manifest), out, seed=0)
    # Nothing is left behind: neither the output nor its temporary sibling.
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.png", "user"]


def tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, bytes and modification time: any write shows up."""
    return {str(p.relative_to(root)): ("dir", None, p.stat().st_mtime_ns) if p.is_dir() and not p.is_symlink()
            else ("file", p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_cell_reentering_the_folder_is_refused_and_nothing_is_written(tmp_path):
    """`images/../../user/...` leaves the dataset folder and comes back only by its name, which a copy of the
    dataset does not share: refused naming its row and cell, before anything is written, anywhere."""
    root = tmp_path / "user"
    manifest = user_dataset(root)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    cell = "images/../../user/images/c1/001.png"
    frame.loc[1, "image"] = cell  # manifest row 3 (header is row 1)
    frame.to_csv(manifest, index=False)
    out = tmp_path / "out" / "raw"
    before = tree(tmp_path)
    with pytest.raises(ManifestError) as err:
        ingest(cfg_for(manifest), out, seed=0)
    assert "row 3, column 'image'" in str(err.value) and repr(cell) in str(err.value)
    assert "escapes the dataset folder" in str(err.value)
    assert not out.exists() and not out.parent.exists()
    assert tree(tmp_path) == before


def test_failed_ingest_keeps_the_previous_output(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    out = tmp_path / "raw"
    ingest(cfg_for(manifest), out, seed=0)
    before = (out / MANIFEST_NAME).read_text()
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[0, "audio"] = "/etc/passwd"
    frame.to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match=r"row 2, column 'audio'.*absolute"):
        ingest(cfg_for(manifest), out, seed=0)
    assert (out / MANIFEST_NAME).read_text() == before
    assert not list(tmp_path.glob(".raw.*"))


def test_missing_file_keeps_its_row(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    (tmp_path / "user" / "audio" / "001.wav").unlink()
    frame = ingest(cfg_for(manifest), tmp_path / "raw", seed=0)
    assert frame.loc[1, "audio"] == "audio/001.wav"  # `validate` reports it, ingest keeps it
    assert not (tmp_path / "raw" / "audio" / "001.wav").exists()
    assert (tmp_path / "raw" / "audio" / "002.wav").exists()


def test_symlink_inside_the_folder_is_copied_under_the_manifest_path(tmp_path):
    root = tmp_path / "user"
    manifest = user_dataset(root)
    write_png(root / "blobs" / "shared.png", 7)
    for name in ("001.png", "004.png"):  # two cells, one file behind them
        (root / "images" / "c1" / name).unlink()
        (root / "images" / "c1" / name).symlink_to(root / "blobs" / "shared.png")
    out = tmp_path / "raw"
    ingest(cfg_for(manifest), out, seed=0)
    for name in ("001.png", "004.png"):
        copied = out / "images" / "c1" / name
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_bytes() == (root / "blobs" / "shared.png").read_bytes()
    assert not (out / "blobs").exists()  # only what the manifest names


def test_non_normalised_cells_land_where_they_resolve(tmp_path):
    root = tmp_path / "user"
    manifest = user_dataset(root)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[1, "image"] = "images/c1/../c1/001.png"
    frame.loc[2, "image"] = "images\\c2\\002.png"
    frame.to_csv(manifest, index=False)
    out = tmp_path / "raw"
    written = ingest(cfg_for(manifest), out, seed=0)
    for cell in written.loc[[1, 2], "image"]:
        assert resolve_inside(out, cell).is_file(), cell


def test_carve_val_groups_takes_whole_train_groups_and_keeps_test(tmp_path):
    given = ["test" if i % 10 >= 8 else "train" for i in range(N)]
    manifest = user_dataset(tmp_path / "user", split=given)
    frame = read_manifest(manifest)
    frame.insert(2, "group", [f"g{i % 10}" for i in range(N)])  # each group holds every label
    frame.to_csv(manifest, index=False)
    written = ingest(cfg_for(manifest, carve_val_groups=0.25), tmp_path / "raw", seed=0)
    split = written["split"]
    assert (split[[s == "test" for s in given]] == "test").all()
    val, train = set(written.loc[split == "val", "group"]), set(written.loc[split == "train", "group"])
    assert len(val) == 2 and val.isdisjoint(train) and len(train) == 6  # 6 of 24 train rows: two groups of 3
    assert read_manifest(tmp_path / "raw" / MANIFEST_NAME)["split"].tolist() == split.tolist()


def test_carve_val_groups_is_ignored_without_a_split_column(tmp_path, caplog):
    manifest = user_dataset(tmp_path / "user")
    written = ingest(cfg_for(manifest, carve_val_groups=0.25), tmp_path / "raw", seed=0)
    assert written["split"].tolist() == ingest(cfg_for(manifest), tmp_path / "again", seed=0)["split"].tolist()
    assert "carve_val_groups is ignored" in caplog.text


def test_demo_split_holds_out_whole_speakers(tmp_path):
    # The demo stage's dataset, then ingest reading it as any dataset folder.
    build_demo(params_section("demo", n_samples=60, speakers=6), tmp_path / "demo", seed=0)
    frame = ingest(params_section("ingest", dataset=tmp_path / "demo"), tmp_path / "raw", seed=0)
    header = (tmp_path / "raw" / MANIFEST_NAME).read_text().splitlines()[0]
    assert header == "sample_id,label,group,image,audio,text,split"
    assert frame["group"].nunique() == 6
    assert (frame.groupby("group")["split"].nunique() == 1).all()  # val and test speakers are never heard in train
    assert (pd.crosstab(frame["label"], frame["split"]) > 0).all().all() and set(frame["split"]) == {"train", "val",
                                                                                                       "test"}


def test_a_manifest_over_max_rows_is_refused_having_read_only_the_cap(tmp_path):
    manifest = user_dataset(tmp_path / "user")
    with pytest.raises(ManifestError, match=r"has more than 20 rows \(ingest.max_rows\)"):
        ingest(cfg_for(manifest, max_rows=20), tmp_path / "raw", seed=0)
    assert not (tmp_path / "raw").exists()
    assert len(ingest(cfg_for(manifest, max_rows=N), tmp_path / "raw", seed=0)) == N
    frame = read_manifest(manifest)
    frame.to_parquet(tmp_path / "user" / "manifest.parquet")
    with pytest.raises(ManifestError, match="more than 5 rows"):
        read_manifest(tmp_path / "user" / "manifest.parquet", max_rows=5)

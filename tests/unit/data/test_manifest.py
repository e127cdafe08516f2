"""The manifest contract: reading CSV/Parquet, path containment, split assignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multimodal.data.manifest import (
    ManifestError,
    assign_splits,
    carve_val,
    group_overlap,
    modality_columns,
    read_manifest,
    resolve_inside,
)

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": ["007", "010", "2"],
        "label": ["cat", "dog", "cat"],
        "image": ["img/a.png", "", "img/c.png"],
        "text": ["hello", "", "NA"],
    })


# --------------------------------------------------------------------------------------------- read_manifest


def test_read_csv_keeps_ids_and_empty_cells_as_strings(tmp_path):
    path = tmp_path / "manifest.csv"
    small_frame().to_csv(path, index=False)
    frame = read_manifest(path)
    assert frame["sample_id"].tolist() == ["007", "010", "2"]
    assert frame["image"].tolist() == ["img/a.png", "", "img/c.png"]
    # "NA" is text, not a missing value; an empty cell is "".
    assert frame["text"].tolist() == ["hello", "", "NA"]
    assert modality_columns(frame) == ["image", "text"]


def test_read_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("sample_id,label,text\n007,a,hi\n", encoding="utf-8-sig")  # as Excel writes it
    frame = read_manifest(path)
    assert frame.columns.tolist() == ["sample_id", "label", "text"]
    assert frame.loc[0, "sample_id"] == "007"


def test_read_parquet_keeps_ids_and_empty_cells_as_strings(tmp_path):
    path = tmp_path / "manifest.parquet"
    data = small_frame()
    data.loc[1, "image"] = None  # a real null in parquet becomes ""
    data.to_parquet(path, index=False)
    frame = read_manifest(path)
    assert frame["sample_id"].tolist() == ["007", "010", "2"]
    assert frame["image"].tolist() == ["img/a.png", "", "img/c.png"]
    assert all(isinstance(v, str) for v in frame["label"])


def test_missing_required_column(tmp_path):
    path = tmp_path / "manifest.csv"
    small_frame().drop(columns=["label"]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"lacks required column\(s\) \['label'\]"):
        read_manifest(path)


def test_unknown_column(tmp_path):
    path = tmp_path / "manifest.csv"
    small_frame().assign(caption="x").to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"unknown column\(s\) \['caption'\]"):
        read_manifest(path)


def test_no_modality_column(tmp_path):
    path = tmp_path / "manifest.csv"
    small_frame()[["sample_id", "label"]].assign(split="train").to_csv(path, index=False)
    with pytest.raises(ManifestError, match="no modality column"):
        read_manifest(path)


def test_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(bad)


# --------------------------------------------------------------------------------------------- resolve_inside


@pytest.mark.parametrize("cell", ["../x", "a/../../x", "/etc/passwd", "\\etc\\passwd", "C:/Windows/x", "..\\x"])
def test_resolve_inside_refuses_escapes(tmp_path, cell):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(ManifestError, match="absolute|escapes"):
        resolve_inside(root, cell)


def test_resolve_inside_refuses_reentry_by_folder_name(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(ManifestError, match="escapes"):
        resolve_inside(root, "a/../../data/x.png")


def test_resolve_inside_refuses_symlink_pointing_outside(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    (root / "link.png").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ManifestError, match="escapes"):
        resolve_inside(root, "link.png")
    with pytest.raises(ManifestError, match="escapes"):
        resolve_inside(root, "dirlink/secret.png")


def test_resolve_inside_accepts_nested_relative_paths(tmp_path):
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    assert resolve_inside(root, "a/b/c.png") == (root / "a" / "b" / "c.png").resolve()
    # `..` that stays inside the folder, and Windows separators, are fine.
    assert resolve_inside(root, "a/../a/b/c.png") == (root / "a" / "b" / "c.png").resolve()
    assert resolve_inside(root, "a\\b\\c.png") == (root / "a" / "b" / "c.png").resolve()


def test_resolve_inside_accepts_symlink_staying_inside(tmp_path):
    root = tmp_path / "data"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "real.png").write_bytes(b"x")
    (root / "alias.png").symlink_to(root / "blobs" / "real.png")
    assert resolve_inside(root, "alias.png") == (root / "blobs" / "real.png").resolve()


# --------------------------------------------------------------------------------------------- assign_splits


def balanced_frame(n: int = 200, classes: int = 10) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [f"{i:04d}" for i in range(n)],
        "label": [f"c{i % classes}" for i in range(n)],
        "text": ["t"] * n,
    })


def test_assign_splits_honours_fractions():
    frame = balanced_frame()
    split = assign_splits(frame, FRACTIONS, seed=0)
    assert split.name == "split"
    assert split.index.equals(frame.index)
    counts = split.value_counts().to_dict()
    assert set(counts) == {"train", "val", "test"}
    assert sum(counts.values()) == 200
    for name, fraction in FRACTIONS.items():
        assert abs(counts[name] / 200 - fraction) <= 0.05, counts


def test_assign_splits_is_stratified():
    frame = balanced_frame()
    split = assign_splits(frame, FRACTIONS, seed=3)
    table = pd.crosstab(frame["label"], split)
    assert table.shape == (10, 3)
    assert (table > 0).all().all()
    # 20 rows per class: 14 / 3 / 3 in every class.
    assert (table["train"] == 14).all() and (table["val"] == 3).all() and (table["test"] == 3).all()


def test_assign_splits_keeps_groups_whole():
    rng = np.random.default_rng(0)
    n = 240
    groups = [f"g{i // 4}" for i in range(n)]  # 60 groups of 4
    frame = pd.DataFrame({
        "sample_id": [str(i) for i in range(n)],
        "label": [f"c{(i // 4) % 3}" for i in range(n)],
        "group": groups,
        "text": ["t"] * n,
    })
    frame.loc[rng.choice(n, 10, replace=False), "group"] = ""  # ungrouped rows are their own unit
    split = assign_splits(frame, FRACTIONS, seed=1)
    grouped = frame["group"] != ""
    per_group = split[grouped].groupby(frame.loc[grouped, "group"]).nunique()
    assert (per_group == 1).all(), per_group[per_group > 1]
    assert set(split) == {"train", "val", "test"}
    assert split.notna().all()


def speaker_frame(speakers: int = 30, per_label: int = 10, seed: int = 0) -> pd.DataFrame:
    """Every speaker says every digit `per_label` times, as in the demo: no label tells speakers apart."""
    rows = [{"sample_id": f"{g}-{d}-{k}", "label": str(d), "group": f"spk{g:02d}", "text": "t"}
            for g in range(speakers) for d in range(10) for k in range(per_label)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("speakers", [7, 20, 40])
def test_speakers_are_held_out_whole_with_every_label_in_every_split(speakers):
    frame = speaker_frame(speakers)
    split = assign_splits(frame, FRACTIONS, seed=0)
    assert (split.groupby(frame["group"]).nunique() == 1).all()  # a speaker lives in one split
    assert (pd.crosstab(frame["label"], split) > 0).all().all() and set(split) == set(FRACTIONS)
    # Sample counts near the fractions, to within one speaker.
    share = split.value_counts(normalize=True)
    for name, fraction in FRACTIONS.items():
        assert abs(share[name] - fraction) <= 1 / speakers + 1e-9, share


@pytest.mark.parametrize("make_frame", [lambda: balanced_frame(), lambda: speaker_frame()], ids=["labels", "speakers"])
def test_assign_splits_is_deterministic_for_a_seed(make_frame):
    frame = make_frame()
    first = assign_splits(frame, FRACTIONS, seed=7)
    assert first.equals(assign_splits(frame, FRACTIONS, seed=7))
    assert not first.equals(assign_splits(frame, FRACTIONS, seed=8))


def test_a_label_in_too_few_groups_cannot_be_split():
    frame = speaker_frame(10)
    frame.loc[frame["label"] == "3", "group"] = frame.loc[frame["label"] == "3", "group"].where(
        frame["group"] < "spk02", "spk00")  # only speakers 0 and 1 say "3"
    with pytest.raises(ManifestError, match=r"label\(s\) \['3'\] occur in fewer than 3 groups"):
        assign_splits(frame, FRACTIONS, seed=0)


def test_carve_val_moves_whole_train_groups_and_keeps_test():
    frame = speaker_frame(20)
    frame["split"] = np.where(frame["group"] < "spk04", "test", "train")
    split = carve_val(frame, 0.25, seed=0)
    assert (split[frame["split"] == "test"] == "test").all()  # test untouched
    val = frame.loc[split == "val", "group"]
    assert set(val).isdisjoint(frame.loc[split == "train", "group"]) and val.nunique() == 4  # 4 of 16 speakers
    assert sorted(frame.loc[split == "val", "label"].unique()) == [str(d) for d in range(10)]
    assert group_overlap(frame.assign(split=split)) == []


def test_carve_val_refuses_a_split_that_has_val_rows():
    frame = speaker_frame(10).assign(split="train")
    frame.loc[0, "split"] = "val"
    with pytest.raises(ManifestError, match="already has 1 val rows.*carve_val_groups: null"):
        carve_val(frame, 0.2, seed=0)


def test_group_overlap_names_the_shared_groups_per_pair_of_splits():
    frame = pd.DataFrame({"group": ["a", "a", "b", "b", "c", ""], "split": ["train", "test", "train", "val", "val",
                                                                          "test"]})
    assert group_overlap(frame) == [
        "split 'val' shares 1 group(s) with 'train' (1 val rows): ['b']; its scores measure groups seen in 'train', "
        "not new ones",
        "split 'test' shares 1 group(s) with 'train' (1 test rows): ['a']; its scores measure groups seen in 'train', "
        "not new ones",
    ]
    assert group_overlap(frame.drop(columns="group")) == []

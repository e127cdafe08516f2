"""The dataset contract: a CSV/Parquet manifest beside its files (see DESIGN.md).

Columns: `sample_id`, `label` (required); `split`, `group` (optional); one column per modality. Image and audio
cells are paths relative to the manifest's folder that may not escape it; text cells hold the text itself.
An empty modality cell means the sample lacks that modality.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from multimodal.config import MODALITIES

REQUIRED = ("sample_id", "label")
OPTIONAL = ("split", "group")
SPLITS = ("train", "val", "test")
FILE_MODALITIES = ("image", "audio")  # cells are paths; text cells are content
MANIFEST_NAME = "manifest.csv"


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the file, column or row."""


def read_manifest(path: str | Path, *, errors: str = "strict") -> pd.DataFrame:
    """Read a manifest as strings (empty cells -> ""), checking columns. Never guesses dtypes of ids.

    `errors="surrogateescape"` keeps bytes that are not UTF-8 (a latin-1 cell) as lone surrogates instead of
    refusing the whole file, so `validate` can name the rows that hold them; `write_manifest` writes them back.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path).astype("string").fillna("")
        else:
            # dtype=object, then str below: read as dtype=str, a kept surrogate would fail inside pandas' reader.
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8", encoding_errors=errors)
    except UnicodeDecodeError as err:
        raise ManifestError(f"cannot read manifest {path}: it is not UTF-8 ({err}); save it as UTF-8") from err
    except (OSError, ValueError) as err:
        raise ManifestError(f"cannot read manifest {path}: {err}") from err
    try:
        frame = frame.astype(str)
    except UnicodeEncodeError:
        # Arrow-backed strings (pandas 3) cannot hold the surrogates `surrogateescape` made: keep Python strings.
        frame = frame.astype(object)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks required column(s) {missing}; it has {list(frame.columns)}")
    unknown = [c for c in frame.columns if c not in (*REQUIRED, *OPTIONAL, *MODALITIES)]
    if unknown:
        raise ManifestError(
            f"manifest {path} has unknown column(s) {unknown}; allowed: {[*REQUIRED, *OPTIONAL, *MODALITIES]}"
        )
    if not any(m in frame.columns for m in MODALITIES):
        raise ManifestError(f"manifest {path} has no modality column; expected one of {list(MODALITIES)}")
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write `frame` as a CSV manifest, byte for byte what `read_manifest(..., errors="surrogateescape")` read."""
    frame.to_csv(path, index=False, encoding="utf-8", errors="surrogateescape")


def modality_columns(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODALITIES if m in frame.columns]


def resolve_inside(root: Path, cell: str) -> Path:
    """Resolve a manifest path cell against `root`; refuse absolute paths and anything escaping `root`."""
    rel = PurePosixPath(cell.replace("\\", "/"))
    if rel.is_absolute() or cell.startswith(("/", "\\")) or (len(cell) > 1 and cell[1] == ":"):
        raise ManifestError(f"path {cell!r} is absolute; manifest paths must be relative to the manifest folder")
    root = root.resolve()
    # The written form on its own, not joined to root: `a/../../<folder name>/x` leaves the folder and comes back
    # only by the folder's name, which a copy of the dataset does not share; refuse it like any `..` escape.
    if _lexical(cell).parts[:1] == ("..",):
        raise ManifestError(f"path {cell!r} escapes the dataset folder {root}")
    # resolve() follows symlinks, so a link pointing outside the folder is caught here.
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ManifestError(f"path {cell!r} escapes the dataset folder {root} through a symlink")
    return full


def _lexical(cell: str) -> Path:
    """The cell normalised as written (`a/./b/../c` -> `a/c`), symlinks not followed."""
    return Path(os.path.normpath(cell.replace("\\", "/")))


def relative_target(cell: str) -> Path:
    """Where a path cell's file lives under a copied dataset folder: the cell, normalised, symlinks not followed.

    A copy placed there is what `resolve_inside(copy, cell)` finds. Refuses what `resolve_inside` refuses in writing.
    """
    target = _lexical(cell)
    if target.is_absolute() or target.parts[:1] == ("..",):
        raise ManifestError(f"path {cell!r} escapes the dataset folder")
    return target


def assign_splits(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Stratified (by label) split; with a `group` column, whole groups go to one split."""
    rng = np.random.default_rng(seed)
    units = frame["group"].where(frame["group"] != "", frame["sample_id"]) if "group" in frame else frame["sample_id"]
    # A unit (group or sample) is stratified by its most common label.
    unit_label = frame.groupby(units)["label"].agg(lambda s: s.value_counts().index[0])
    split_of_unit: dict[str, str] = {}
    for _, members in unit_label.groupby(unit_label):
        names = members.index.to_numpy().copy()
        rng.shuffle(names)
        n = len(names)
        n_train = int(round(fractions["train"] * n))
        n_val = int(round(fractions["val"] * n))
        for i, name in enumerate(names):
            split_of_unit[name] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return units.map(split_of_unit).rename("split")

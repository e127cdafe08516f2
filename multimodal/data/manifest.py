"""The dataset contract: a CSV/Parquet manifest beside its files (see DESIGN.md).

Columns: `sample_id`, `label` (required); `split`, `group` (optional); one column per modality
(`multimodal.modalities`).
A file modality's cells are paths relative to the manifest's folder that may not escape it; an inline modality's
cells (text) hold the value itself.
An empty modality cell means the sample lacks that modality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from multimodal.modalities import get_modality, names

# Re-exported: a manifest's path cells are resolved by the storage layer, which the modality modules use too.
from multimodal.storage.paths import ManifestError, relative_target, resolve_inside  # noqa: F401

REQUIRED = ("sample_id", "label")
OPTIONAL = ("split", "group")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"


def read_manifest(path: str | Path, *, errors: str = "strict", max_rows: int | None = None,
                  required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """Read a manifest as strings (empty cells -> ""), checking columns. Never guesses dtypes of ids.

    With `max_rows`, a manifest of more rows is refused having read at most `max_rows + 1` of them (a CSV) or only
    its footer (Parquet): memory stays bounded whatever the file holds. `required`: the columns that must be there
    (`predict` reads manifests without a `label`).

    `errors="surrogateescape"` keeps bytes that are not UTF-8 (a latin-1 cell) as lone surrogates instead of
    refusing the whole file, so `validate` can name the rows that hold them; `write_manifest` writes them back.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            if max_rows is not None:
                import pyarrow.parquet as pq

                if (rows := pq.ParquetFile(path).metadata.num_rows) > max_rows:
                    raise TooLong(rows)
            frame = pd.read_parquet(path).astype("string").fillna("")
        else:
            # dtype=object, then str below: read as dtype=str, a kept surrogate would fail inside pandas' reader.
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8", encoding_errors=errors,
                                nrows=None if max_rows is None else max_rows + 1)
            if max_rows is not None and len(frame) > max_rows:
                raise TooLong(len(frame))
    except TooLong:
        raise ManifestError(f"manifest {path} has more than {max_rows} rows (ingest.max_rows); raise the cap or "
                            "split the dataset") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"cannot read manifest {path}: it is not UTF-8 ({err}); save it as UTF-8") from err
    except (OSError, ValueError) as err:
        raise ManifestError(f"cannot read manifest {path}: {err}") from err
    try:
        frame = frame.astype(str)
    except UnicodeEncodeError:
        # Arrow-backed strings (pandas 3) cannot hold the surrogates `surrogateescape` made: keep Python strings.
        frame = frame.astype(object)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks required column(s) {missing}; it has {list(frame.columns)}")
    modalities = names()
    unknown = [c for c in frame.columns if c not in (*REQUIRED, *OPTIONAL, *modalities)]
    if unknown:
        raise ManifestError(
            f"manifest {path} has unknown column(s) {unknown}; allowed: {[*REQUIRED, *OPTIONAL, *modalities]}"
        )
    if not any(m in frame.columns for m in modalities):
        raise ManifestError(f"manifest {path} has no modality column; expected one of {modalities}")
    return frame


class TooLong(Exception):
    """Internal: the manifest holds more rows than allowed (reported as a ManifestError)."""


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write `frame` as a CSV manifest, byte for byte what `read_manifest(..., errors="surrogateescape")` read."""
    frame.to_csv(path, index=False, encoding="utf-8", errors="surrogateescape")


def modality_columns(frame: pd.DataFrame) -> list[str]:
    """The manifest's modality columns, in the manifest's order."""
    known = set(names())
    return [str(c) for c in frame.columns if c in known]


def file_columns(frame: pd.DataFrame) -> list[str]:
    """The modality columns whose cells are paths inside the dataset folder."""
    return [m for m in modality_columns(frame) if get_modality(m).reads_file]


def _units(frame: pd.DataFrame) -> pd.Series:
    """What a split keeps whole: the row's group, or the row alone where it has none (prefixed: never confused)."""
    rows = "row:" + frame["sample_id"].astype(str)
    if "group" not in frame:
        return rows
    return ("group:" + frame["group"].astype(str)).where(frame["group"] != "", rows)


def _unit_classes(units: pd.Series, labels: pd.Series) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, ...]]]:
    """(unit names, class names, per unit: (class indices, counts)): a sparse unit x class count table."""
    unit_names, unit_idx = np.unique(units.to_numpy(dtype=str), return_inverse=True)
    classes, class_idx = np.unique(labels.to_numpy(dtype=str), return_inverse=True)
    keys, counts = np.unique(unit_idx.astype(np.int64) * len(classes) + class_idx, return_counts=True)
    starts = np.searchsorted(keys // len(classes), np.arange(len(unit_names) + 1))
    per_unit = [(keys[a:b] % len(classes), counts[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    return unit_names, classes, per_unit


def _greedy(per_unit: list[tuple[np.ndarray, ...]], targets: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """Units in `order`, each to the split where it first brings the most missing classes, then where it brings
    the per-class counts closest to `targets` (splits x classes) in squared error; (split per unit, counts)."""
    counts = np.zeros_like(targets)
    split_of = np.empty(len(per_unit), dtype=np.int64)
    for unit in order:
        cls, n = per_unit[unit]
        here = counts[:, cls]
        new_classes = (here == 0).sum(axis=1)
        error_change = (n * (2 * (here - targets[:, cls]) + n)).sum(axis=1)
        split_of[unit] = np.lexsort((error_change, -new_classes))[0]
        counts[split_of[unit], cls] += n
    return split_of, counts


_ATTEMPTS = 20  # random unit orders tried before declaring the class coverage unreachable


def _split_units(units: pd.Series, labels: pd.Series, fractions: dict[str, float],
                 rng: np.random.Generator) -> dict[str, str]:
    """Unit -> split name: sample counts near `fractions` per class, every class in every split, or ManifestError."""
    names = list(fractions)
    unit_names, classes, per_unit = _unit_classes(units, labels)
    held_by = np.concatenate([cls for cls, _ in per_unit])
    holders = np.bincount(held_by, minlength=len(classes))
    scarce = classes[holders < len(names)].tolist()
    if scarce:
        raise ManifestError(
            f"cannot split: label(s) {scarce[:20]} occur in fewer than {len(names)} groups (or ungrouped rows), but "
            f"every split {names} needs every label and a group stays in one split; add data for them or give a "
            "`split` column")
    totals = np.bincount(held_by, weights=np.concatenate([n for _, n in per_unit]), minlength=len(classes))
    targets = np.array([fractions[name] for name in names])[:, None] * totals[None, :]
    sizes = np.array([n.sum() for _, n in per_unit])
    for _ in range(_ATTEMPTS):
        shuffled = rng.permutation(len(per_unit))
        order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]  # big units first, ties in random order
        split_of, counts = _greedy(per_unit, targets, order)
        if (counts > 0).all():
            return {unit: names[k] for unit, k in zip(unit_names, split_of)}
    lacking = {names[k]: classes[counts[k] == 0].tolist()[:10] for k in range(len(names)) if (counts[k] == 0).any()}
    raise ManifestError(f"cannot split {len(unit_names)} groups so that every split {names} holds every label "
                        f"(after {_ATTEMPTS} tries, e.g. missing {lacking}); add groups or give a `split` column")


def assign_splits(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """A split per row: whole groups (rows without a group alone), sample counts per label near `fractions`,
    every label in every split; ManifestError where that is impossible. Without groups it is a stratified split."""
    units = _units(frame)
    mapping = _split_units(units, frame["label"], fractions, np.random.default_rng(seed))
    return units.map(mapping).rename("split")


def carve_val(frame: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """The given `split` with `fraction` of the train rows, whole groups, moved to val (every label in both)."""
    given = int((frame["split"] == "val").sum())
    if given:
        raise ManifestError(f"ingest.carve_val_groups moves train groups to val, but the manifest's `split` column "
                            f"already has {given} val rows; drop them or set ingest.carve_val_groups: null")
    train = frame["split"] == "train"
    units = _units(frame[train])
    mapping = _split_units(units, frame.loc[train, "label"], {"train": 1 - fraction, "val": fraction},
                           np.random.default_rng(seed))
    return frame["split"].where(~train, units.map(mapping)).rename("split")


def group_overlap(frame: pd.DataFrame, limit: int = 10) -> list[str]:
    """One sentence per pair of splits sharing groups: evaluation on seen groups (empty: none shared)."""
    if "group" not in frame:
        return []
    grouped = frame[frame["group"].fillna("") != ""]
    members = {split: set(grouped.loc[grouped["split"] == split, "group"]) for split in SPLITS}
    out = []
    for seen, held in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(members[seen] & members[held], key=str)
        if shared:
            rows = int(((grouped["split"] == held) & grouped["group"].isin(shared)).sum())
            shown = shared[:limit] + ["..."] * (len(shared) > limit)
            out.append(f"split {held!r} shares {len(shared)} group(s) with {seen!r} ({rows} {held} rows): {shown}; "
                       f"its scores measure groups seen in {seen!r}, not new ones")
    return out

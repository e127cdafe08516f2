"""The profile table `validate` checks: one row per manifest row, built from the manifest *and the files*.

Each modality cell is profiled by its modality's `probe` (header facts first, then a full decode) into
`<modality>_<field>` columns, beside `present`, `exists` (file modalities), `decodes`, `error` and a content hash.
Files are read one at a time, never beyond `validate.max_file_mb`, so memory stays bounded whatever the dataset
size; any failure becomes a finding on its row, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from multimodal.data.manifest import ManifestError, modality_columns, resolve_inside
from multimodal.data.params import Validate
from multimodal.modalities import Modality, get_modality

_IN_MEMORY = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
PRESENT_COUNT = "modalities_present"  # profile column: how many modality cells of the row are filled
_ROW_COLUMNS = {"sample_id": "object", "label": "object", "split": "object", "group": "object", "utf8": "boolean",
                "utf8_column": "object", "utf8_error": "object"}
# Columns every modality has, before its own `profile_fields`; `exists` only where cells are paths.
_CELL_COLUMNS = {"present": "boolean", "exists": "boolean", "decodes": "boolean", "error": "object",
                 "sha256": "object"}


def display(text: str) -> str:
    """`text` safe to print, write as UTF-8 or render: bytes that were not UTF-8 become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def utf8_problem(row: Mapping[str, str]) -> tuple[str, str]:
    """(column, description) of the first cell holding bytes that were not UTF-8, or ("", "").

    The manifest is read with `surrogateescape`, so each such byte survives as a lone surrogate U+DC80..U+DCFF.
    """
    for column, value in row.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            code = ord(value[err.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
            return column, f"{column!r} is not valid UTF-8 ({what} at character {err.start}); save the manifest as UTF-8"
    return "", ""


def error_text(err: BaseException) -> str:
    # libsndfile errors carry a clean message in `error_string`; str() would embed the BytesIO repr.
    message = getattr(err, "error_string", None) or str(err) or type(err).__name__
    return f"{type(err).__name__}: {message}"


def read_capped(cell: str, root: Path, max_bytes: int) -> tuple[bytes | None, dict[str, Any]]:
    """Resolve and read one path cell, its size checked before a byte is read; on any problem return
    (None, {exists, error}) instead of raising."""
    try:
        path = resolve_inside(root, cell)
    except ManifestError as err:
        return None, {"exists": False, "error": f"unsafe path: {display(str(err))}"}
    if not path.exists():
        return None, {"exists": False, "error": f"file not found: {display(cell)}"}
    if not path.is_file():
        return None, {"exists": False, "error": f"not a regular file: {display(cell)}"}
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, {"exists": True, "error": f"file is {size / 2**20:.1f} MB; allowed "
                                                   f"{max_bytes / 2**20:g} MB (validate.max_file_mb)"}
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since stat(): never read beyond the cap
    except OSError as err:
        return None, {"exists": True, "error": f"unreadable: {error_text(err)}"}
    if len(data) > max_bytes:
        return None, {"exists": True, "error": f"file grew beyond {max_bytes / 2**20:g} MB while read"}
    if not data:
        return None, {"exists": True, "error": "empty file (0 bytes)"}
    return data, {"exists": True, "error": ""}


def cell_columns(modality: Modality) -> dict[str, str]:
    """{field: dtype} of one modality's profile columns (without the `<modality>_` prefix)."""
    common = {k: v for k, v in _CELL_COLUMNS.items() if k != "exists" or modality.reads_file}
    return {**common, **modality.profile_fields}


def profile_cell(modality: Modality, cell: str, root: Path, options: Validate) -> dict[str, Any]:
    """Profile one cell of `modality`: presence, existence, decode, its properties and its content hash."""
    out: dict[str, Any] = dict.fromkeys(cell_columns(modality))
    out.update(present=bool(cell), decodes=False, error="")
    if modality.reads_file:
        out["exists"] = False
    if cell:
        if modality.reads_file:
            data, status = read_capped(cell, root, int(options.max_file_mb * 2**20))
            out.update(status)
            source: Any = io.BytesIO(data) if data is not None else None
        else:
            # surrogateescape: hash the bytes the manifest held, even where they were not UTF-8.
            data, source = cell.encode("utf-8", "surrogateescape"), cell
        if data is not None:
            out["sha256"] = hashlib.sha256(data).hexdigest()
            try:
                facts = modality.probe(source, options.modalities[modality.name])
                out.update({field: facts[field] for field in modality.profile_fields})
                out["decodes"] = True
            except Exception as err:  # noqa: BLE001 - any decoder failure is a finding on this row, not a crash
                # Decoders name the in-memory copy they read (`<_io.BytesIO object at 0x...>`): name the cell.
                text = _IN_MEMORY.sub(repr(display(cell)), error_text(err)) if modality.reads_file else error_text(err)
                out["error"] = f"cannot decode {modality.name}: {text}"
    return {f"{modality.name}_{key}": value for key, value in out.items()}


def _profile_row(row: dict[str, str], modalities: Sequence[Modality], root: Path, options: Validate) -> dict:
    bad_column, bad_utf8 = utf8_problem(row)
    out: dict[str, Any] = {
        # Empty cells become nulls so the not-null expectations see them; the rest is shown safely.
        "sample_id": display(row["sample_id"]) or None,
        "label": display(row["label"]) or None,
        "split": display(row.get("split", "")),
        "group": display(row.get("group", "")) or None,
        "utf8": not bad_column,
        "utf8_column": bad_column,
        "utf8_error": bad_utf8,
    }
    for modality in modalities:
        out.update(profile_cell(modality, row[modality.name], root, options))
    out[PRESENT_COUNT] = sum(bool(row[m.name]) for m in modalities)
    return out


def _rows(frame: pd.DataFrame) -> Iterator[dict[str, str]]:
    """Manifest rows as dicts, one at a time (no list of every row held besides the frame)."""
    columns = list(frame.columns)
    for values in zip(*(frame[c].tolist() for c in columns)):
        yield dict(zip(columns, values))


def _add_group_splits(profile: pd.DataFrame) -> None:
    """`group_splits`: in how many splits the row's group occurs (null without a group); > 1 is leakage."""
    if profile["group"].notna().any():
        profile["group_splits"] = profile.groupby("group")["split"].transform("nunique")
    else:
        profile["group_splits"] = None
    profile["group_splits"] = pd.to_numeric(profile["group_splits"]).astype("Int64")


def missing_sections(frame: pd.DataFrame, options: Validate) -> list[str]:
    """The manifest's modality columns that have no `validate.modalities` section to check them by."""
    return [m for m in modality_columns(frame) if m not in options.modalities]


def profile_samples(frame: pd.DataFrame, root: Path, options: Validate) -> pd.DataFrame:
    """One row per manifest row: ids, label, split, group, encoding and, per modality, presence/decode/properties/hash.

    The result keeps the manifest's row order with a fresh 0..n-1 index (row position = index).
    """
    if missing := missing_sections(frame, options):
        raise ValueError(f"the manifest has modality column(s) {missing} but params `validate.modalities` has no "
                         f"section for them; add validate.modalities.{missing[0]} (see docs/data.md)")
    root = Path(root)
    modalities = [get_modality(m) for m in modality_columns(frame)]
    rows = tqdm(_rows(frame), total=len(frame), desc="validate: profile", unit="sample", mininterval=1.0)
    profiled = [_profile_row(row, modalities, root, options) for row in rows]
    dtypes = {**_ROW_COLUMNS, **{f"{m.name}_{k}": v for m in modalities for k, v in cell_columns(m).items()},
              PRESENT_COUNT: "Int64"}
    profile = pd.DataFrame(profiled, index=pd.RangeIndex(len(profiled)), columns=list(dtypes))
    _add_group_splits(profile)
    for column, dtype in dtypes.items():
        if dtype == "Int64":
            profile[column] = pd.to_numeric(profile[column]).astype("Int64")
        elif dtype == "float64":
            profile[column] = pd.to_numeric(profile[column]).astype("float64")
    return profile

"""Dataset validation: a per-sample profile built from the manifest *and the files*, checked by Great Expectations.

`profile_samples` decodes every file once (streaming, one sample in memory at a time) into a flat table;
`row_checks` / `dataset_checks` turn the `validate` params into GX expectations over that table, each tagged with a
stable check name; `validate_dataset` runs them through two Checkpoints (one per suite, one Data Docs site) and maps
every unexpected value back to the manifest row, column, file and a human reason. `split_rows` then separates valid
rows from the quarantine table, checking that no row is lost.

Row checks look at one sample each (a file that does not decode, a label outside the set, a duplicated id): removing
the row removes the problem, so the `quarantine` policy can set such rows aside. Dataset checks (zero rows, a class
with no row in a split) run on the rows that pass every row check; no row removal fixes them, so they always fail.
A group that spans splits is a warning, not a failure: a given split may evaluate on seen groups on purpose.

Great Expectations takes ~6 s to import, so it is imported inside the functions that need it: importing this
module stays cheap for stages and tests that only profile.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from multimodal.config import MODALITIES, Validate
from multimodal.manifest import FILE_MODALITIES, SPLITS, ManifestError, group_overlap, modality_columns, resolve_inside

log = logging.getLogger(__name__)

ROW_SUITE = "sample_checks"
DATASET_SUITE = "dataset_checks"
PRESENT_COUNT = "modalities_present"  # profile column: how many modality cells of the row are filled
SILENCE_LEVEL = 10 ** (-60 / 20)  # |x| below -60 dBFS counts as silent
CLIP_LEVEL = 0.999  # |x| at or above this share of full scale counts as clipped
_INT_COLUMNS = (
    "image_width", "image_height", "image_channels", "audio_sample_rate", "audio_channels", "text_chars",
    "text_words", "group_splits",
)
_AUDIO_BLOCK = 1 << 16  # frames per block when scanning audio: bounded memory for long clips


def manifest_row(index: int) -> int:
    """Row number as a spreadsheet shows the manifest (header = row 1); ingest's messages count the same way."""
    return index + 2


def row_index(row: int) -> int:
    """The 0-based frame position of manifest row `row` (the inverse of `manifest_row`)."""
    return row - 2


# --------------------------------------------------------------------------------------------- text cells


def display(text: str) -> str:
    """`text` safe to print, write as UTF-8 or render: bytes that were not UTF-8 become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _utf8_problem(row: dict[str, str]) -> tuple[str, str]:
    """(column, description) of the first cell holding bytes that were not UTF-8, or ("", "").

    The manifest is read with `surrogateescape`, so each such byte survives as a lone surrogate U+DC80..U+DCFF.
    """
    for column, value in row.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            code = ord(value[err.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
            where = f"{what} at character {err.start}"
            return column, f"{column!r} is not valid UTF-8 ({where}); save the manifest as UTF-8"
    return "", ""


# --------------------------------------------------------------------------------------------- profiling


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _error_text(err: BaseException) -> str:
    # libsndfile errors carry a clean message in `error_string`; str() would embed the BytesIO repr.
    message = getattr(err, "error_string", None) or str(err) or type(err).__name__
    return f"{type(err).__name__}: {message}"


def _read_file(cell: str, root: Path) -> tuple[bytes | None, dict[str, Any]]:
    """Resolve and read one path cell; on any problem return (None, {exists, error}) instead of raising."""
    try:
        path = resolve_inside(root, cell)
    except ManifestError as err:
        return None, {"exists": False, "error": f"unsafe path: {display(str(err))}"}
    if not path.exists():
        return None, {"exists": False, "error": f"file not found: {display(cell)}"}
    if not path.is_file():
        return None, {"exists": False, "error": f"not a regular file: {display(cell)}"}
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, {"exists": True, "error": f"unreadable: {_error_text(err)}"}
    if not data:
        return None, {"exists": True, "error": "empty file (0 bytes)"}
    return data, {"exists": True, "error": ""}


def _decode_image(data: bytes) -> dict[str, Any]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # open() only reads the header; load() decodes the pixels and catches truncation
        return {"width": image.width, "height": image.height, "mode": image.mode, "channels": len(image.getbands())}


def _decode_audio(data: bytes) -> dict[str, Any]:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as sound:
        expected, rate, channels = sound.frames, sound.samplerate, sound.channels
        read, peak, silent, clipped = 0, 0.0, 0, 0
        for block in sound.blocks(blocksize=_AUDIO_BLOCK, dtype="float32", always_2d=True):
            if not len(block):
                continue
            magnitude = np.abs(block)
            read += len(block)
            peak = max(peak, float(magnitude.max()))
            silent += int(np.count_nonzero(magnitude < SILENCE_LEVEL))
            clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
    # libsndfile returns what it can from a cut-off file without complaint; the header's frame count tells.
    if read < expected:
        raise ValueError(f"truncated: header promises {expected} frames, only {read} decode")
    values = read * channels
    return {
        "sample_rate": rate,
        "channels": channels,
        "duration_s": read / rate if rate else 0.0,
        "peak": peak,
        "silence": silent / values if values else 1.0,
        "clipping": clipped / values if values else 0.0,
    }


_DECODERS = {"image": _decode_image, "audio": _decode_audio}
# Properties of a file that is absent or does not decode: nulls, which the range/set expectations skip.
_EMPTY = {
    "image": dict.fromkeys(("width", "height", "mode", "channels")),
    "audio": dict.fromkeys(("sample_rate", "channels", "duration_s", "peak", "silence", "clipping")),
}


def _profile_file(modality: str, cell: str, root: Path) -> dict[str, Any]:
    """Profile one image/audio cell: presence, existence, decode, properties and content hash."""
    out: dict[str, Any] = {"present": bool(cell), "exists": False, "decodes": False, "error": "", "sha256": None}
    properties = dict(_EMPTY[modality])
    if cell:
        data, status = _read_file(cell, root)
        out.update(status)
        if data is not None:
            out["sha256"] = _sha256(data)
            try:
                properties = _DECODERS[modality](data)
                out["decodes"] = True
            except Exception as err:  # noqa: BLE001 - any decoder failure is a finding on this row, not a crash
                out["error"] = f"cannot decode {modality}: {_error_text(err)}"
    out.update(properties)
    return {f"{modality}_{key}": value for key, value in out.items()}


def _profile_text(cell: str) -> dict[str, Any]:
    present = bool(cell)
    return {
        "text_present": present,
        "text_chars": len(cell) if present else None,
        # Whitespace words: a tokenizer-free proxy for token count (the text encoder is a preprocess choice).
        "text_words": len(cell.split()) if present else None,
        # surrogateescape: hash the bytes the manifest held, even where they were not UTF-8.
        "text_sha256": _sha256(cell.encode("utf-8", "surrogateescape")) if present else None,
    }


def _profile_row(row: dict[str, str], modalities: Sequence[str], root: Path) -> dict[str, Any]:
    bad_column, bad_utf8 = _utf8_problem(row)
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
        cell = row[modality]
        out.update(_profile_text(cell) if modality == "text" else _profile_file(modality, cell, root))
    out[PRESENT_COUNT] = sum(bool(row[m]) for m in modalities)
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


def profile_samples(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per manifest row: ids, label, split, group, encoding and, per modality, presence/decode/properties/hash.

    Files are read and decoded one at a time, so memory stays bounded whatever the dataset size.
    The result keeps the manifest's row order with a fresh 0..n-1 index (row position = index).
    """
    root = Path(root)
    modalities = modality_columns(frame)
    rows = tqdm(_rows(frame), total=len(frame), desc="validate: profile", unit="sample", mininterval=1.0)
    profiled = [_profile_row(row, modalities, root) for row in rows]
    profile = pd.DataFrame(profiled, index=pd.RangeIndex(len(profiled)))
    if profile.empty:
        profile = pd.DataFrame(columns=_profile_columns(modalities))
    _add_group_splits(profile)
    for column in _INT_COLUMNS:
        if column in profile:
            profile[column] = pd.to_numeric(profile[column]).astype("Int64")
    return profile


def _profile_columns(modalities: Sequence[str]) -> list[str]:
    """Column names of a profile table, for an empty manifest (no rows to infer them from)."""
    fake = {"sample_id": "", "label": "", "split": "", **{m: "" for m in modalities}}
    return list(_profile_row(fake, modalities, Path(".")))


def allowed_labels(frame: pd.DataFrame, labels: Sequence[str] | None) -> list[str]:
    """The label list: `labels` from params as given, else the train split's labels, sorted.

    Integer-like labels sort numerically ("2" before "10"); the order defines class indices downstream.
    """
    if labels is not None:
        return [str(label) for label in labels]
    train = frame[frame["split"] == "train"] if "split" in frame else frame
    if train.empty:
        log.warning("no train rows to take the label set from; using the labels of every row")
        train = frame
    found = {display(str(label)) for label in train["label"] if str(label) != ""}
    numeric = all(re.fullmatch(r"-?\d+", label) for label in found)
    return sorted(found, key=int) if numeric else sorted(found)


# --------------------------------------------------------------------------------------------- the checks

# (row position, profile row as a dict, whole profile) -> (manifest column, why this row fails)
Reason = Callable[[int, dict[str, Any], pd.DataFrame], tuple[str, str]]


@dataclass(frozen=True)
class Check:
    """One named check: a GX expectation plus, for row checks, how to explain a failing row."""

    name: str  # stable key in report.json, the metrics and docs/data.md
    meaning: str  # one line: what passing means (shown in Data Docs as the expectation's notes)
    expectation: Any  # a GX Expectation; meta["check"] carries `name` through the GX result
    reason: Reason | None = None  # row checks only


def _shown(values: Sequence[Any], limit: int = 20) -> list[Any]:
    return list(values) if len(values) <= limit else [*values[:limit], "..."]


def _at(column: str, why: str) -> Reason:
    """A reason naming a fixed manifest column; `why` is formatted with the profile row's fields."""
    return lambda _index, row, _profile: (column, why.format(**row))


def _duplicate_of(key: str, column: str, what: str) -> Reason:
    """Reason for a duplicated value in profile `key`: names the other rows holding the same value."""
    groups: dict[Any, Any] = {}  # value -> row positions, computed once on first use (not once per failing row)

    def reason(index: int, row: dict[str, Any], profile: pd.DataFrame) -> tuple[str, str]:
        if not groups:
            groups.update(profile.groupby(key).indices)
        group = groups[row[key]]
        others = [f"{profile.at[i, 'sample_id']!s} (row {manifest_row(i)})" for i in group[:6] if i != index][:5]
        return column, f"{what} also in {others + ['...'] * (len(group) > 6)}"

    return reason


def _decode_failure(modality: str) -> Reason:
    return lambda _index, row, _profile: (modality, row[f"{modality}_error"] or f"{modality} does not decode")


def _utf8_failure(_index: int, row: dict[str, Any], _profile: pd.DataFrame) -> tuple[str, str]:
    return row["utf8_column"], row["utf8_error"]


def _row_checks_common(gx: Any, labels: Sequence[str]) -> list[Check]:
    ex = gx.expectations
    return [
        Check("sample_id_present", "every row has a sample_id",
              ex.ExpectColumnValuesToNotBeNull(column="sample_id"), _at("sample_id", "empty sample_id")),
        Check("sample_id_unique", "no sample_id occurs twice",
              ex.ExpectColumnValuesToBeUnique(column="sample_id"),
              _duplicate_of("sample_id", "sample_id", "duplicate sample_id: the same id is")),
        Check("utf8", "every cell is valid UTF-8",
              ex.ExpectColumnValuesToBeInSet(column="utf8", value_set=[True]), _utf8_failure),
        Check("label_present", "every row has a label",
              ex.ExpectColumnValuesToNotBeNull(column="label"), _at("label", "missing label (empty cell)")),
        Check("label_in_set", f"every label is one of the allowed labels {_shown(labels)}",
              ex.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
              _at("label", f"label {{label!r}} not in the allowed labels {_shown(labels)}")),
        Check("split_in_set", f"every split is one of {list(SPLITS)}",
              ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
              _at("split", f"split {{split!r}} is not one of {list(SPLITS)}")),
        Check("any_modality", "every row has at least one modality",
              ex.ExpectColumnValuesToBeBetween(column=PRESENT_COUNT, min_value=1),
              _at(PRESENT_COUNT, "no modality present: every modality cell is empty")),
    ]


def _file_checks(gx: Any, modality: str, options: Validate) -> list[Check]:
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    present = Column(f"{modality}_present") == True  # noqa: E712 - builds a GX condition, not a comparison
    checks = [
        Check(f"{modality}_decodes", f"every {modality} path names a readable file inside the dataset folder "
              "that decodes",
              ex.ExpectColumnValuesToBeInSet(column=f"{modality}_decodes", value_set=[True], row_condition=present),
              _decode_failure(modality)),
    ]
    if options.unique_content:
        checks.append(Check(
            f"{modality}_unique_content", f"no two rows hold the same {modality} bytes",
            ex.ExpectColumnValuesToBeUnique(column=f"{modality}_sha256"),
            _duplicate_of(f"{modality}_sha256", modality, f"duplicate content: the same {modality} bytes are"),
        ))
    return checks


def _image_checks(gx: Any, options: Validate) -> list[Check]:
    ex = gx.expectations
    low, high = options.image_min_size, options.image_max_size
    checks = [
        Check(f"image_{side}", f"image {side} is {low}..{high} px",
              ex.ExpectColumnValuesToBeBetween(column=f"image_{side}", min_value=low, max_value=high),
              _at("image", f"image {side} is {{image_{side}}} px; allowed {low}..{high}"))
        for side in ("width", "height")
    ]
    if options.image_modes is not None:
        modes = list(options.image_modes)
        checks.append(Check("image_mode", f"image mode is one of {modes}",
                            ex.ExpectColumnValuesToBeInSet(column="image_mode", value_set=modes),
                            _at("image", f"image mode {{image_mode!r}} is not one of {modes}")))
    return checks


def _audio_checks(gx: Any, options: Validate) -> list[Check]:
    ex = gx.expectations
    low, high = options.audio_min_duration_s, options.audio_max_duration_s
    checks = []
    if options.audio_sample_rates is not None:
        rates = list(options.audio_sample_rates)
        checks.append(Check("audio_sample_rate", f"audio sample rate is one of {rates} Hz",
                            ex.ExpectColumnValuesToBeInSet(column="audio_sample_rate", value_set=rates),
                            _at("audio", f"sample rate {{audio_sample_rate}} Hz is not one of {rates}")))
    if options.audio_channels is not None:
        channels = list(options.audio_channels)
        checks.append(Check("audio_channels", f"audio channel count is one of {channels}",
                            ex.ExpectColumnValuesToBeInSet(column="audio_channels", value_set=channels),
                            _at("audio", f"{{audio_channels}} channels; allowed {channels}")))
    checks += [
        Check("audio_duration", f"audio lasts {low:g}..{high:g} s",
              ex.ExpectColumnValuesToBeBetween(column="audio_duration_s", min_value=low, max_value=high),
              _at("audio", f"duration {{audio_duration_s:.3f}} s; allowed {low:g}..{high:g} s")),
        Check("audio_clipping", f"at most {options.audio_max_clipping:.1%} of audio samples at full scale",
              ex.ExpectColumnValuesToBeBetween(column="audio_clipping", max_value=options.audio_max_clipping),
              _at("audio", f"{{audio_clipping:.1%}} of samples clipped; allowed {options.audio_max_clipping:.1%}")),
        Check("audio_silence", f"at most {options.audio_max_silence:.1%} of audio samples below -60 dBFS",
              ex.ExpectColumnValuesToBeBetween(column="audio_silence", max_value=options.audio_max_silence),
              _at("audio", f"{{audio_silence:.1%}} of samples silent; allowed {options.audio_max_silence:.1%}")),
    ]
    return checks


def _text_checks(gx: Any, options: Validate) -> list[Check]:
    ex = gx.expectations
    low, high = options.text_min_chars, options.text_max_chars
    return [
        Check("text_length", f"text has {low}..{high} characters",
              ex.ExpectColumnValuesToBeBetween(column="text_chars", min_value=low, max_value=high),
              _at("text", f"text has {{text_chars}} characters; allowed {low}..{high}")),
        Check("text_not_blank", "text holds at least one word (not only whitespace)",
              ex.ExpectColumnValuesToBeBetween(column="text_words", min_value=1),
              _at("text", "text is blank: only whitespace")),
    ]


def row_checks(modalities: Sequence[str], labels: Sequence[str], options: Validate) -> list[Check]:
    """Checks on single rows: a failing row can be quarantined. Thresholds come from `options` (params)."""
    gx = _gx()
    checks = _row_checks_common(gx, labels)
    for modality in modalities:
        if modality in FILE_MODALITIES:
            checks += _file_checks(gx, modality, options)
    if "image" in modalities:
        checks += _image_checks(gx, options)
    if "audio" in modalities:
        checks += _audio_checks(gx, options)
    if "text" in modalities:
        checks += _text_checks(gx, options)
    return checks


def dataset_checks(labels: Sequence[str]) -> list[Check]:
    """Checks on the rows that pass every row check: failures no row removal can fix."""
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    checks = [Check("rows_present", "at least one valid row", ex.ExpectTableRowCountToBeBetween(min_value=1))]
    checks += [
        Check(f"classes_in_{split}", f"every allowed label has a valid row in split {split!r}",
              ex.ExpectColumnDistinctValuesToContainSet(
                  column="label", value_set=list(labels), row_condition=Column("split") == split))
        for split in SPLITS
    ]
    return checks


def build_suite(checks: Sequence[Check], name: str) -> Any:
    """A GX ExpectationSuite of `checks`, each expectation tagged with its check name and meaning."""
    gx = _gx()
    expectations = []
    for check in checks:
        expectation = check.expectation.copy(update={"meta": {"check": check.name}, "notes": check.meaning})
        expectations.append(expectation)
    # Passed to the constructor: `suite.add_expectation` needs an active data context (it checks a store).
    return gx.ExpectationSuite(name=name, expectations=expectations)


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CheckSummary:
    name: str
    scope: str  # "row", "dataset" or "warning" (reported, never failing)
    expectation: str
    success: bool
    count: int  # failing rows (row checks) or missing items (dataset checks)
    meaning: str
    error: str = ""  # set when GX raised while evaluating: counts as a failure, never as a pass


@dataclass(frozen=True)
class FailingRow:
    sample_id: str
    row: int  # manifest row as a spreadsheet shows it: the header is row 1, the first sample row 2
    column: str  # manifest column the problem is in (or `modalities_present` for a row with no modality)
    check: str
    reason: str
    file: str = ""  # the path cell as written in the manifest, for image/audio problems


@dataclass
class ValidationResult:
    labels: list[str]
    checks: list[CheckSummary]
    failing_rows: list[FailingRow]
    dataset_failures: list[str]  # one sentence each: problems no row removal fixes
    profile: pd.DataFrame = field(repr=False)
    warnings: list[str] = field(default_factory=list)  # one sentence each: worth knowing, not failing

    @property
    def invalid_rows(self) -> list[int]:
        """0-based frame positions of the rows failing at least one row check."""
        return sorted({row_index(f.row) for f in self.failing_rows})

    @property
    def n_failing_rows(self) -> int:
        return len(self.invalid_rows)

    @property
    def failed_checks(self) -> list[CheckSummary]:
        return [c for c in self.checks if not c.success and c.scope != "warning"]

    @property
    def success(self) -> bool:
        return not self.failing_rows and not self.dataset_failures and not self.failed_checks

    def to_report(self) -> dict[str, Any]:
        """JSON-ready summary (no timestamps, so identical data gives an identical report)."""
        return {
            "success": self.success,
            "rows": len(self.profile),
            "valid_rows": len(self.profile) - self.n_failing_rows,
            "invalid_rows": self.n_failing_rows,
            "labels": self.labels,
            "checks": [asdict(c) for c in self.checks],
            "dataset_failures": self.dataset_failures,
            "warnings": self.warnings,
            "failing_rows": [asdict(f) for f in self.failing_rows],
        }


def _check_name(res: Any) -> str:
    return (res.expectation_config.meta or {}).get("check", res.expectation_config.type)


def _summaries(gx_result: Any, scope: str, meanings: dict[str, str]) -> list[CheckSummary]:
    out = []
    for res in gx_result.results:
        info = res.exception_info or {}
        error = info.get("exception_message", "") if info.get("raised_exception") else ""
        result = res.result or {}
        count = result.get("unexpected_count") if scope == "row" else result.get("missing_count")
        if scope == "dataset" and count is None:
            count = 0 if res.success else 1  # the row-count check: no items, just pass or fail
        name = _check_name(res)
        out.append(CheckSummary(name, scope, res.expectation_config.type, bool(res.success) and not error,
                                int(count or 0), meanings.get(name, ""), error or ""))
    return out


def _failing_rows(
    gx_result: Any, frame: pd.DataFrame, profile: pd.DataFrame, checks: Sequence[Check]
) -> list[FailingRow]:
    """Map each unexpected index of each failed row check back to its manifest row, column, file and reason."""
    by_name = {c.name: c for c in checks}
    hits = [
        (by_name[_check_name(res)], int(index))
        for res in gx_result.results
        if not res.success and by_name.get(_check_name(res)) and by_name[_check_name(res)].reason
        for index in (res.result or {}).get("unexpected_index_list") or []
    ]
    # Rows as dicts, fetched once and together: a pandas row lookup per hit costs ~1 ms, 10 s on 10k failing rows.
    wanted = sorted({index for _, index in hits})
    rows = dict(zip(wanted, profile.iloc[wanted].to_dict(orient="records")))
    cells = dict(zip(wanted, frame.iloc[wanted].to_dict(orient="records")))
    found: dict[tuple[int, str, str], FailingRow] = {}
    for check, index in hits:
        column, reason = check.reason(index, rows[index], profile)
        file = display(cells[index][column]) if column in FILE_MODALITIES else ""
        sample_id = display(cells[index]["sample_id"])  # the manifest's own cell: the profile holds None for ""
        entry = FailingRow(sample_id, manifest_row(index), column, check.name, reason, file)
        found[(entry.row, entry.check, entry.column)] = entry
    return [found[key] for key in sorted(found)]


def _dataset_failures(summaries: Sequence[CheckSummary], gx_result: Any, rows: int, labels: Sequence[str]) -> list[str]:
    """One sentence per failed dataset check (and per check that could not run at all)."""
    missing_by_check = {_check_name(r): (r.result or {}).get("partial_missing_list") or [] for r in gx_result.results}
    order = {label: i for i, label in enumerate(labels)}
    no_rows = any(s.name == "rows_present" and not s.success for s in summaries)
    out = []
    for summary in summaries:
        if summary.success or (no_rows and summary.name.startswith("classes_in_")):
            continue  # with no valid row at all, "every class is missing from every split" adds nothing
        if summary.error:
            out.append(f"check {summary.name} could not run: {summary.error}")
        elif summary.name == "rows_present":
            out.append(f"no valid rows: all {rows} rows fail a row check" if rows else "the manifest has zero rows")
        else:
            split = summary.name.removeprefix("classes_in_")
            missing = sorted(missing_by_check[summary.name], key=lambda label: order.get(label, len(order)))
            out.append(f"split {split!r} has no valid row of {summary.count} class(es): {_shown(missing)}")
    return out


# --------------------------------------------------------------------------------------------- running GX


def _gx():
    """Import Great Expectations with its analytics switched off (set before the import, as GX reads it then)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs ~200 INFO lines per run (config loading, docs registration): keep its warnings only.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def _context(workdir: Path | None) -> Any:
    """An ephemeral GX context, or a file context in `workdir` (needed to render Data Docs)."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if workdir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(workdir))
    # GX draws a "Calculating Metrics" bar per expectation batch: noise next to our own progress bar.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _run_checkpoint(context: Any, name: str, table: pd.DataFrame, suite: Any, docs: bool) -> Any:
    """Run `suite` over `table` through a Checkpoint named `name`; with `docs`, it also updates the Data Docs."""
    gx = _gx()
    batch_definition = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_table")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=context.suites.add(suite))
    )
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=actions,
            # COMPLETE: every unexpected row index, so each failing row can be named, not just a sample of them.
            result_format={"result_format": "COMPLETE"},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": table})
    return next(iter(run.run_results.values()))


def _copy_docs(workdir: Path, docs_dir: Path) -> None:
    """Copy the rendered Data Docs site out of the GX project: manifest content escaped, nothing loaded from the web."""
    from multimodal.data_docs import publish  # late: only runs that write Data Docs need it

    publish(workdir, docs_dir)


def _gx_json(gx_result: Any) -> str:
    return json.dumps(gx_result.to_json_dict(), indent=2, sort_keys=True, default=str) + "\n"


_GROUP_MEANING = "no group spans two splits, so val and test measure unseen groups (a warning: rows stay)"


def validate_dataset(
    frame: pd.DataFrame, root: Path, options: Validate, *, docs_dir: Path | None = None
) -> ValidationResult:
    """Profile the manifest rows against their files, run the row and dataset suites, and name every failure.

    Dataset checks see only the rows that pass every row check: what would go on under `quarantine`.
    With `docs_dir`, the Data Docs HTML site and the raw GX results (`gx_<suite>.json`) are written there.
    The result does not depend on `options.on_invalid`; the stage applies the policy.
    """
    labels = allowed_labels(frame, options.labels)
    profile = profile_samples(frame, root)
    per_row = row_checks(modality_columns(frame), labels, options)
    per_dataset = dataset_checks(labels)
    meanings = {c.name: c.meaning for c in [*per_row, *per_dataset]}
    with tempfile.TemporaryDirectory(prefix="gx-") as tmp:
        context = _context(Path(tmp) if docs_dir is not None else None)
        row_result = _run_checkpoint(context, ROW_SUITE, profile, build_suite(per_row, ROW_SUITE), docs_dir is not None)
        failing = _failing_rows(row_result, frame, profile, per_row)
        valid = profile.drop(index=[row_index(f.row) for f in failing])
        dataset_result = _run_checkpoint(
            context, DATASET_SUITE, valid, build_suite(per_dataset, DATASET_SUITE), docs_dir is not None
        )
        if docs_dir is not None:
            docs_dir = Path(docs_dir)
            _copy_docs(Path(tmp), docs_dir)
            for name, gx_result in ((ROW_SUITE, row_result), (DATASET_SUITE, dataset_result)):
                (docs_dir / f"gx_{name}.json").write_text(_gx_json(gx_result), encoding="utf-8")
    row_summaries = _summaries(row_result, "row", meanings)
    dataset_summaries = _summaries(dataset_result, "dataset", meanings)
    broken = [f"check {c.name} could not run: {c.error}" for c in row_summaries if c.error]
    overlap, leaking = group_overlap(profile), int((profile["group_splits"] > 1).sum())
    result = ValidationResult(
        labels=labels,
        checks=row_summaries + dataset_summaries + [CheckSummary(
            "group_in_one_split", "warning", "group_overlap", not leaking, leaking, _GROUP_MEANING)],
        failing_rows=failing,
        dataset_failures=broken + _dataset_failures(dataset_summaries, dataset_result, len(profile), labels),
        profile=profile,
        warnings=overlap,
    )
    for warning in overlap:
        log.warning("validate: %s", warning)
    log.info(
        "validated %d rows: %s (%d failing rows, %d dataset failures)",
        len(profile), "ok" if result.success else "FAILED", result.n_failing_rows, len(result.dataset_failures),
    )
    return result


# --------------------------------------------------------------------------------------------- reporting


def describe_failures(result: ValidationResult, limit: int = 20) -> str:
    """Human summary: dataset failures, then failing rows with file and reason (first `limit`, then a count)."""
    lines = [f"  dataset: {failure}" for failure in result.dataset_failures]
    for entry in result.failing_rows[:limit]:
        where = f" file {entry.file!r}" if entry.file else ""
        lines.append(f"  row {entry.row} sample {entry.sample_id!r} [{entry.column}]{where}: {entry.reason}")
    extra = len(result.failing_rows) - limit
    if extra > 0:
        lines.append(f"  ... and {extra} more problem(s) on {result.n_failing_rows} failing row(s) in all")
    return "\n".join(lines)


def split_rows(frame: pd.DataFrame, result: ValidationResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, quarantine table): every manifest row lands in exactly one of them.

    The quarantine table keeps the manifest columns as read and adds `manifest_row`, `checks` and `reasons`.
    """
    invalid = result.invalid_rows
    valid = frame.drop(index=frame.index[invalid])
    quarantined = frame.iloc[invalid].copy()
    by_row: dict[int, list[FailingRow]] = {}
    for entry in result.failing_rows:
        by_row.setdefault(entry.row, []).append(entry)
    rows = [manifest_row(i) for i in invalid]
    quarantined.insert(0, "manifest_row", rows)
    quarantined["checks"] = ["; ".join(e.check for e in by_row[r]) for r in rows]
    # " | " between reasons: a reason itself may hold "; ".
    quarantined["reasons"] = [" | ".join(f"{e.column}: {e.reason}" for e in by_row[r]) for r in rows]
    # Nothing may be dropped silently: fail loudly if the two tables do not add up to the manifest.
    if len(valid) + len(quarantined) != len(frame) or set(valid.index) & set(quarantined.index):
        raise RuntimeError(
            f"row accounting broken: {len(frame)} in, {len(valid)} valid + {len(quarantined)} quarantined"
        )
    return valid, quarantined.reset_index(drop=True)


def present_counts(profile: pd.DataFrame) -> dict[str, int]:
    """Per modality column of the manifest: how many rows have that modality's cell filled."""
    return {m: int(profile[f"{m}_present"].sum()) for m in MODALITIES if f"{m}_present" in profile}


def check_counts(result: ValidationResult) -> dict[str, int]:
    """Per check: failing rows (row checks) or missing items (dataset checks); 0 means it passed."""
    return {c.name: c.count if c.success or c.count else 1 for c in result.checks}

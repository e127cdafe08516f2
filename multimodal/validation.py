"""Dataset validation: a per-sample profile built from the manifest *and the files*, checked by Great Expectations.

`profile_samples` decodes every file once (streaming, one sample in memory at a time) into a flat table;
`build_suite` turns the params into a GX ExpectationSuite over that table; `validate_dataset` runs it and maps
every unexpected value back to the manifest row, column, file and a human reason.

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
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from multimodal.config import MODALITIES
from multimodal.manifest import FILE_MODALITIES, SPLITS, ManifestError, modality_columns, resolve_inside

log = logging.getLogger(__name__)

SUITE_NAME = "multimodal_samples"
PRESENT_COUNT = "modalities_present"  # profile column: how many modality cells of the row are filled
_INT_COLUMNS = ("image_width", "image_height", "audio_sample_rate", "audio_channels", "text_chars")
_AUDIO_BLOCK = 1 << 16  # frames per block when scanning audio: bounded memory for long clips


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
        return None, {"exists": False, "error": f"unsafe path: {err}"}
    if not path.is_file():
        return None, {"exists": False, "error": f"file not found: {cell}"}
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
        return {"width": image.width, "height": image.height, "mode": image.mode}


def _decode_audio(data: bytes) -> dict[str, Any]:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as sound:
        expected, rate, channels = sound.frames, sound.samplerate, sound.channels
        read, peak = 0, 0.0
        for block in sound.blocks(blocksize=_AUDIO_BLOCK, dtype="float32", always_2d=True):
            read += len(block)
            if len(block):
                peak = max(peak, float(np.abs(block).max()))
    # libsndfile returns what it can from a cut-off file without complaint; the header's frame count tells.
    if read < expected:
        raise ValueError(f"truncated: header promises {expected} frames, only {read} decode")
    return {"sample_rate": rate, "channels": channels, "duration_s": read / rate if rate else 0.0, "peak": peak}


_DECODERS = {"image": _decode_image, "audio": _decode_audio}
_EMPTY = {
    "image": {"width": None, "height": None, "mode": ""},
    "audio": {"sample_rate": None, "channels": None, "duration_s": None, "peak": None},
}


def _profile_file(modality: str, cell: str, root: Path) -> dict[str, Any]:
    """Profile one image/audio cell: presence, existence, decode, properties and content hash."""
    out: dict[str, Any] = {"present": bool(cell), "exists": False, "decodes": False, "error": "", "sha256": ""}
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
        "text_chars": len(cell),
        # surrogatepass: a stray surrogate (possible from Parquet) still hashes instead of raising.
        "text_sha256": _sha256(cell.encode("utf-8", "surrogatepass")) if present else "",
    }


def _profile_row(row: dict[str, str], modalities: Sequence[str], root: Path) -> dict[str, Any]:
    sample_id = row["sample_id"]
    out: dict[str, Any] = {
        "sample_id": sample_id or None,  # empty ids become nulls so the not-null expectation sees them
        "label": row["label"],
        "split": row.get("split", ""),
    }
    for modality in modalities:
        cell = row[modality]
        out.update(_profile_text(cell) if modality == "text" else _profile_file(modality, cell, root))
    out[PRESENT_COUNT] = sum(bool(row[m]) for m in modalities)
    return out


def profile_samples(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per manifest row: ids, label, split and, per modality column, presence/decode/properties/hash.

    Files are read and decoded one at a time, so memory stays bounded whatever the dataset size.
    The result keeps the manifest's row order with a fresh 0..n-1 index (row position = index).
    """
    root = Path(root)
    modalities = modality_columns(frame)
    rows = frame.to_dict(orient="records")
    profiled = [
        _profile_row(row, modalities, root)
        for row in tqdm(rows, desc="validate: profile", unit="sample", mininterval=1.0)
    ]
    profile = pd.DataFrame(profiled, index=pd.RangeIndex(len(profiled)))
    if profile.empty:
        profile = pd.DataFrame(columns=_profile_columns(modalities))
    for column in _INT_COLUMNS:
        if column in profile:
            profile[column] = profile[column].astype("Int64")
    return profile


def _profile_columns(modalities: Sequence[str]) -> list[str]:
    """Column names of a profile table, for an empty manifest (no rows to infer them from)."""
    fake = {"sample_id": "", "label": "", "split": "", **{m: "" for m in modalities}}
    return list(_profile_row(fake, modalities, Path(".")))


# --------------------------------------------------------------------------------------------- the suite


def _gx():
    """Import Great Expectations with its analytics switched off (set before the import, as GX reads it then)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs ~200 INFO lines per run (config loading, docs registration): keep its warnings only.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


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
    found = {str(label) for label in train["label"] if str(label) != ""}
    numeric = all(re.fullmatch(r"-?\d+", label) for label in found)
    return sorted(found, key=int) if numeric else sorted(found)


def build_suite(modalities: Sequence[str], labels: Sequence[str], text_max_chars: int, name: str = SUITE_NAME):
    """The GX ExpectationSuite over a profile table (see `profile_samples`) for these modalities and labels."""
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    expectations: list[Any] = [ex.ExpectTableRowCountToBeBetween(min_value=1)]
    required = ["sample_id", "label", "split", PRESENT_COUNT]
    required += [f"{m}_present" for m in modalities]
    required += [f"{m}_decodes" for m in modalities if m in FILE_MODALITIES]
    expectations += [ex.ExpectColumnToExist(column=column) for column in required]
    expectations += [
        ex.ExpectColumnValuesToNotBeNull(column="sample_id"),
        ex.ExpectColumnValuesToBeUnique(column="sample_id"),
        ex.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
        ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        ex.ExpectColumnValuesToBeBetween(column=PRESENT_COUNT, min_value=1),
    ]
    for modality in modalities:
        present = Column(f"{modality}_present") == True  # noqa: E712 - builds a GX condition, not a comparison
        if modality in FILE_MODALITIES:
            expectations.append(
                ex.ExpectColumnValuesToBeInSet(column=f"{modality}_decodes", value_set=[True], row_condition=present)
            )
        elif modality == "text":
            expectations.append(
                ex.ExpectColumnValuesToBeBetween(
                    column="text_chars", min_value=1, max_value=text_max_chars, row_condition=present
                )
            )
    # Passed to the constructor: `suite.add_expectation` needs an active data context (it checks a store).
    return gx.ExpectationSuite(name=name, expectations=expectations)


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExpectationSummary:
    name: str
    column: str | None
    success: bool
    unexpected_count: int
    error: str = ""  # set when GX raised while evaluating (e.g. a missing column)


@dataclass(frozen=True)
class FailingRow:
    sample_id: str
    row: int  # 1-based data row of the manifest (header not counted)
    column: str  # manifest column the problem is in, or the profile column for row-wide checks
    reason: str
    file: str = ""  # the path cell as written in the manifest, for image/audio problems


@dataclass
class ValidationResult:
    success: bool
    labels: list[str]
    expectations: list[ExpectationSummary]
    failing_rows: list[FailingRow]
    profile: pd.DataFrame = field(repr=False)
    docs: str = ""  # "data_docs" when the HTML site + GX result JSON were written, "" when no docs_dir was given

    @property
    def failed_expectations(self) -> list[ExpectationSummary]:
        return [e for e in self.expectations if not e.success]

    @property
    def n_failing_rows(self) -> int:
        return len({f.row for f in self.failing_rows})

    def to_report(self) -> dict[str, Any]:
        """JSON-ready summary (no timestamps, so identical data gives an identical report)."""
        return {
            "success": self.success,
            "rows": len(self.profile),
            "valid_rows": len(self.profile) - self.n_failing_rows,
            "labels": self.labels,
            "expectations": [asdict(e) for e in self.expectations],
            "failing_rows": [asdict(f) for f in self.failing_rows],
            "docs": self.docs,
        }


def _reason(check: str, column: str, row: pd.Series, labels: Sequence[str], text_max_chars: int) -> tuple[str, str]:
    """(manifest column, reason) for one unexpected value of expectation `check` on profile `column`."""
    if column == "sample_id":
        if check == "expect_column_values_to_not_be_null":
            return "sample_id", "empty sample_id"
        return "sample_id", f"duplicate sample_id {row['sample_id']!r}"
    if column == "label":
        shown = list(labels) if len(labels) <= 20 else [*labels[:20], "..."]
        return "label", f"label {row['label']!r} not in the allowed labels {shown}"
    if column == "split":
        return "split", f"split {row['split']!r} is not one of {list(SPLITS)}"
    if column == PRESENT_COUNT:
        return PRESENT_COUNT, "no modality present: every modality cell is empty"
    if column == "text_chars":
        return "text", f"text has {row['text_chars']} characters; allowed 1..{text_max_chars}"
    modality = column.removesuffix("_decodes")
    return modality, row.get(f"{modality}_error", "") or f"{modality} does not decode"


def _summaries(gx_result: Any) -> list[ExpectationSummary]:
    out = []
    for res in gx_result.results:
        config = res.expectation_config
        info = res.exception_info or {}
        error = info.get("exception_message", "") if info.get("raised_exception") else ""
        out.append(
            ExpectationSummary(
                name=config.type,
                column=config.kwargs.get("column"),
                success=bool(res.success),
                unexpected_count=int((res.result or {}).get("unexpected_count") or 0),
                error=error or "",
            )
        )
    return out


def _failing_rows(
    gx_result: Any, frame: pd.DataFrame, profile: pd.DataFrame, labels: Sequence[str], text_max_chars: int
) -> list[FailingRow]:
    """Map each unexpected index of each failed row-level expectation back to its manifest row."""
    found: dict[tuple[int, str, str], FailingRow] = {}
    for res in gx_result.results:
        column = res.expectation_config.kwargs.get("column")
        indices = (res.result or {}).get("unexpected_index_list") or []
        if res.success or column is None:
            continue
        for index in indices:
            index = int(index)
            row = profile.loc[index]
            manifest_column, reason = _reason(res.expectation_config.type, column, row, labels, text_max_chars)
            file = frame.iloc[index][manifest_column] if manifest_column in FILE_MODALITIES else ""
            sample_id = frame.iloc[index]["sample_id"]  # the manifest's own cell: the profile holds NaN for ""
            entry = FailingRow(str(sample_id), index + 1, manifest_column, reason, file)
            found[(entry.row, entry.column, entry.reason)] = entry
    return [found[key] for key in sorted(found)]


# --------------------------------------------------------------------------------------------- running GX


def _silence_gx(context: Any) -> None:
    # GX draws a "Calculating Metrics" bar per expectation batch: noise next to our own progress bar.
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)


def _run_suite(profile: pd.DataFrame, suite: Any, workdir: Path | None) -> Any:
    """Run `suite` over `profile` through a Checkpoint; with `workdir`, a file context there also renders Data Docs."""
    gx = _gx()
    if workdir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(workdir))
    _silence_gx(context)
    batch_definition = (
        context.data_sources.add_pandas("profile")
        .add_dataframe_asset("samples")
        .add_batch_definition_whole_dataframe("all_samples")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="validate_samples", data=batch_definition, suite=suite)
    )
    actions = [] if workdir is None else [gx.checkpoint.UpdateDataDocsAction(name="data_docs")]
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=actions,
            # COMPLETE: every unexpected row index, so each failing row can be named, not just a sample of them.
            result_format={"result_format": "COMPLETE"},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": profile})
    return next(iter(run.run_results.values()))


_BEACON = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/logo-long\.png[^\"']*")


def _copy_docs(workdir: Path, docs_dir: Path) -> None:
    """Copy the rendered Data Docs site out of the GX project, pointing the navbar logo at the local copy.

    The stock logo URL carries a timestamp and the context id: a tracking pixel whenever the page is opened.
    """
    site = workdir / "gx" / "uncommitted" / "data_docs" / "local_site"
    shutil.copytree(site, docs_dir, dirs_exist_ok=True)
    local_logo = docs_dir / "static" / "images" / "logo-long.png"
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        relative = os.path.relpath(local_logo, page.parent).replace(os.sep, "/")
        page.write_text(_BEACON.sub(relative, text), encoding="utf-8")


def validate_dataset(
    frame: pd.DataFrame,
    root: Path,
    *,
    labels: Sequence[str] | None,
    text_max_chars: int,
    docs_dir: Path | None = None,
) -> ValidationResult:
    """Profile the manifest rows against their files, run the GX suite, and name every failing row.

    `labels` None takes the train split's label set. With `docs_dir`, the Data Docs HTML site and the raw GX
    validation result (`validation_result.json`) are written there.
    """
    label_list = allowed_labels(frame, labels)
    profile = profile_samples(frame, root)
    suite = build_suite(modality_columns(frame), label_list, text_max_chars)
    with tempfile.TemporaryDirectory(prefix="gx-") as tmp:
        workdir = Path(tmp) if docs_dir is not None else None
        gx_result = _run_suite(profile, suite, workdir)
        if docs_dir is not None:
            docs_dir = Path(docs_dir)
            _copy_docs(Path(tmp), docs_dir)
            (docs_dir / "validation_result.json").write_text(_gx_json(gx_result), encoding="utf-8")
    failing = _failing_rows(gx_result, frame, profile, label_list, text_max_chars)
    result = ValidationResult(
        success=bool(gx_result.success) and not failing,
        labels=label_list,
        expectations=_summaries(gx_result),
        failing_rows=failing,
        profile=profile,
        docs="data_docs" if docs_dir is not None else "",
    )
    log.info(
        "validated %d rows: %s (%d failed expectations, %d failing rows)",
        len(profile), "ok" if result.success else "FAILED", len(result.failed_expectations), result.n_failing_rows,
    )
    return result


def _gx_json(gx_result: Any) -> str:
    return json.dumps(gx_result.to_json_dict(), indent=2, sort_keys=True, default=str) + "\n"


def describe_failures(result: ValidationResult, limit: int = 20) -> str:
    """Human summary of a failed validation: failed table-level checks, then failing rows (first `limit`)."""
    lines = []
    for exp in result.failed_expectations:
        if exp.error or exp.column is None or exp.name == "expect_column_to_exist":
            lines.append(f"  {exp.name}({exp.column or ''}) failed {exp.error}".rstrip())
    for entry in result.failing_rows[:limit]:
        where = f" file {entry.file!r}" if entry.file else ""
        lines.append(f"  row {entry.row} sample {entry.sample_id!r} [{entry.column}]{where}: {entry.reason}")
    extra = len(result.failing_rows) - limit
    if extra > 0:
        lines.append(f"  ... and {extra} more")
    return "\n".join(lines)


def present_counts(profile: pd.DataFrame) -> dict[str, int]:
    """Per modality column of the manifest: how many rows have that modality's cell filled."""
    return {m: int(profile[f"{m}_present"].sum()) for m in MODALITIES if f"{m}_present" in profile}

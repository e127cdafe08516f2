"""Dataset validation: the profile table (`multimodal.data.profile`) checked by Great Expectations suites
(`multimodal.data.suites`), every unexpected value mapped back to its manifest row, column, file and a human reason.

`validate_dataset` runs the row suite, then the dataset suite on the rows that pass it, through two Checkpoints (one
Data Docs site); `split_rows` then separates valid rows from the quarantine table, checking that no row is lost. A
group that spans splits is a warning, not a failure: a given split may evaluate on seen groups on purpose.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.data.manifest import group_overlap, modality_columns
from multimodal.data.params import Validate
from multimodal.data.profile import display, profile_samples
from multimodal.data.suites import (
    DATASET_SUITE,
    ROW_SUITE,
    build_suite,
    copy_docs,
    dataset_checks,
    gx_context,
    gx_json,
    row_checks,
    run_checkpoint,
)
from multimodal.modalities import get_modality, names
from multimodal.modalities.checks import Check, manifest_row, row_index, shown

log = logging.getLogger(__name__)


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
    file_columns = [m for m in modality_columns(frame) if get_modality(m).reads_file]
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
        file = display(cells[index][column]) if column in file_columns else ""
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
            out.append(f"split {split!r} has no valid row of {summary.count} class(es): {shown(missing)}")
    return out


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
    profile = profile_samples(frame, root, options)
    per_row = row_checks(modality_columns(frame), labels, options)
    per_dataset = dataset_checks(labels)
    meanings = {c.name: c.meaning for c in [*per_row, *per_dataset]}
    with tempfile.TemporaryDirectory(prefix="gx-") as tmp:
        context = gx_context(Path(tmp) if docs_dir is not None else None)
        row_result = run_checkpoint(context, ROW_SUITE, profile, build_suite(per_row, ROW_SUITE), docs_dir is not None)
        failing = _failing_rows(row_result, frame, profile, per_row)
        valid = profile.drop(index=[row_index(f.row) for f in failing])
        dataset_result = run_checkpoint(
            context, DATASET_SUITE, valid, build_suite(per_dataset, DATASET_SUITE), docs_dir is not None
        )
        if docs_dir is not None:
            docs_dir = Path(docs_dir)
            copy_docs(Path(tmp), docs_dir)
            for name, gx_result in ((ROW_SUITE, row_result), (DATASET_SUITE, dataset_result)):
                (docs_dir / f"gx_{name}.json").write_text(gx_json(gx_result), encoding="utf-8")
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
    return {m: int(profile[f"{m}_present"].sum()) for m in names() if f"{m}_present" in profile}


def check_counts(result: ValidationResult) -> dict[str, int]:
    """Per check: failing rows (row checks) or missing items (dataset checks); 0 means it passed."""
    return {c.name: c.count if c.success or c.count else 1 for c in result.checks}

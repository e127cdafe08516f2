"""DVC stage `validate`: check the ingested dataset (manifest + files) with Great Expectations.

Reads `<paths.raw>/manifest.csv` and writes, atomically, `<paths.validated>/`:
`manifest.csv` (valid rows; paths stay relative to `<paths.raw>`), `quarantine.csv` (rows set aside, with reasons),
`labels.json`, `profile.csv` (every row, with a `valid` column) and `report.json`; the Data Docs HTML site and raw
GX results into `<validate.docs_dir>/`; the metrics `<paths.metrics>/validate.json` (row counts, a count per check).

Data Docs carry run times and random ids, so they live outside `<paths.validated>`: the stages downstream depend on
that folder, and a re-run on unchanged data must leave its hash, and so their cache, intact.

Policy `validate.on_invalid`:
- `fail`: any failing row fails the stage, naming the rows; nothing is written and stale outputs are removed.
- `quarantine`: failing rows go to `quarantine.csv`, the rest go on; rows in = rows valid + rows quarantined.
Dataset failures (zero rows, a class with no valid row in a split) fail under both policies.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.data.manifest import MANIFEST_NAME, ManifestError, read_manifest, write_manifest
from multimodal.data.params import VALIDATE, Validate
from multimodal.data.profile import missing_sections
from multimodal.data.validation import (
    ValidationResult,
    check_counts,
    describe_failures,
    present_counts,
    split_rows,
    validate_dataset,
)
from multimodal.pipeline.params import load_params
from multimodal.pipeline.runtime import go_offline, setup_logging
from multimodal.storage.io import atomic_dir, write_json

log = logging.getLogger(__name__)

PARAMS = VALIDATE

QUARANTINE_NAME = "quarantine.csv"


class ValidationFailed(SystemExit):
    """The stage's failure: exits non-zero with a message naming what failed (no traceback)."""


def metrics(result: ValidationResult, quarantined: int) -> dict[str, Any]:
    """DVC metrics: row counts (rows = valid_rows + quarantined_rows) and, per check, its failure count."""
    rows = len(result.profile)
    return {
        "rows": rows,
        "valid_rows": rows - quarantined,
        "quarantined_rows": quarantined,
        "failed_checks": len(result.failed_checks),
        "labels": len(result.labels),
        "present": present_counts(result.profile),
        "checks": check_counts(result),
    }


def apply_policy(
    frame: pd.DataFrame, result: ValidationResult, options: Validate, manifest: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, quarantine table) under `options.on_invalid`; ValidationFailed where the policy says stop."""
    stop = bool(result.dataset_failures) or (bool(result.failing_rows) and options.on_invalid == "fail")
    if stop:
        hint = ""
        if result.failing_rows and not result.dataset_failures:
            hint = "\nto set failing rows aside and go on, set validate.on_invalid: quarantine in params.yaml"
        elif result.dataset_failures and options.on_invalid == "quarantine":
            hint = "\nthese are dataset-level failures: quarantining rows cannot fix them"
        raise ValidationFailed(
            f"validation of {manifest} failed: {result.n_failing_rows} of {len(frame)} rows fail a row check, "
            f"{len(result.dataset_failures)} dataset failure(s)\n"
            f"{describe_failures(result, options.max_listed)}{hint}"
        )
    return split_rows(frame, result)


def _drop_stale(folders: list[Path], metrics_path: Path) -> None:
    # Outputs left from an earlier run would vouch for data that no longer passes: remove them.
    for folder in folders:
        if folder.exists():
            log.warning("removing stale %s: the current dataset does not validate", folder)
            shutil.rmtree(folder)
    metrics_path.unlink(missing_ok=True)


def _write_outputs(
    out: Path, result: ValidationResult, valid: pd.DataFrame, quarantined: pd.DataFrame, options: Validate
) -> None:
    write_manifest(valid, out / MANIFEST_NAME)
    write_manifest(quarantined, out / QUARANTINE_NAME)  # always there (maybe header only): a stable DVC output
    write_json(out / "labels.json", result.labels)
    profile = result.profile.assign(valid=~result.profile.index.isin(result.invalid_rows))
    profile.to_csv(out / "profile.csv", index=False)
    report = {
        **result.to_report(), "on_invalid": options.on_invalid, "quarantined_rows": len(quarantined),
        "docs": str(options.docs_dir / "index.html"),
    }
    write_json(out / "report.json", report)


def validate_into(raw: Path, target: Path, options: Validate) -> tuple[ValidationResult, int]:
    """Validate `raw/manifest.csv` into `target` and `options.docs_dir` (atomically); (result, rows quarantined).

    Raises ValidationFailed, with neither folder written, when the policy says the dataset does not pass.
    """
    manifest_path = raw / MANIFEST_NAME
    try:
        frame = read_manifest(manifest_path, errors="surrogateescape")
    except ManifestError as err:
        raise ValidationFailed(f"validation cannot start: {err}") from None
    if missing := missing_sections(frame, options):
        raise ValidationFailed(f"validation cannot start: {manifest_path} has modality column(s) {missing} but "
                               f"params has no validate.modalities.{missing[0]} section with their thresholds")
    with atomic_dir(target) as out, atomic_dir(options.docs_dir) as docs:
        result = validate_dataset(frame, raw, options, docs_dir=docs)
        valid, quarantined = apply_policy(frame, result, options, manifest_path)
        _write_outputs(out, result, valid, quarantined, options)
    if len(quarantined):
        log.warning(
            "quarantined %d of %d rows into %s:\n%s", len(quarantined), len(frame), target / QUARANTINE_NAME,
            describe_failures(result, options.max_listed),
        )
    return result, len(quarantined)


def main(params_path: str | Path = "params.yaml") -> None:
    go_offline()
    setup_logging()
    params = load_params(params_path, stage="validate", schema=PARAMS)
    paths = params.base.paths
    metrics_path = paths.metrics / "validate.json"
    try:
        result, quarantined = validate_into(paths.raw, paths.validated, params.validate)
    except BaseException:  # a failure, or a crash: no earlier output may vouch for this dataset
        _drop_stale([paths.validated, params.validate.docs_dir], metrics_path)
        raise
    write_json(metrics_path, metrics(result, quarantined))
    log.info("validated %d rows into %s (%d quarantined)", len(result.profile), paths.validated, quarantined)


if __name__ == "__main__":
    main()

"""DVC stage `validate`: check the ingested dataset (manifest + files) with Great Expectations.

Reads `<paths.raw>/manifest.csv`; on success writes `<paths.validated>/` (manifest.csv, labels.json, profile.csv,
report.json, docs/) atomically and `<paths.metrics>/validate.json`. On failure exits non-zero naming each failing
row, and leaves no `<paths.validated>` folder behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from multimodal.config import Validate, load_params
from multimodal.io import atomic_dir, write_json
from multimodal.manifest import MANIFEST_NAME, ManifestError, read_manifest
from multimodal.runtime import go_offline, setup_logging
from multimodal.validation import ValidationResult, describe_failures, present_counts, validate_dataset

log = logging.getLogger(__name__)


def _metrics(result: ValidationResult) -> dict:
    rows = len(result.profile)
    return {
        "rows": rows,
        "valid_rows": rows - result.n_failing_rows,
        "failed_expectations": len(result.failed_expectations),
        "labels": len(result.labels),
        "present": present_counts(result.profile),
    }


def _drop_stale(folder: Path, metrics: Path) -> None:
    # Outputs left from an earlier run would vouch for data that no longer passes: remove them.
    if folder.exists():
        log.warning("removing stale %s: the current dataset does not validate", folder)
        shutil.rmtree(folder)
    metrics.unlink(missing_ok=True)


def _validate_into(raw: Path, target: Path, options: Validate) -> ValidationResult:
    """Validate `raw/manifest.csv` and write `target` atomically; SystemExit (nothing written) on any failure."""
    manifest_path = raw / MANIFEST_NAME
    try:
        frame = read_manifest(manifest_path)
    except ManifestError as err:
        raise SystemExit(f"validation cannot start: {err}") from None
    with atomic_dir(target) as out:
        result = validate_dataset(
            frame, raw, labels=options.labels, text_max_chars=options.text_max_chars, docs_dir=out / "docs"
        )
        if not result.success:
            raise SystemExit(
                f"validation of {manifest_path} failed: {result.n_failing_rows} of {len(frame)} rows, "
                f"{len(result.failed_expectations)} failed expectation(s)\n{describe_failures(result)}"
            )
        shutil.copyfile(manifest_path, out / MANIFEST_NAME)  # rows unchanged; paths stay relative to raw
        write_json(out / "labels.json", result.labels)
        result.profile.to_csv(out / "profile.csv", index=False)
        write_json(out / "report.json", result.to_report())
    return result


def main(params_path: str | Path = "params.yaml") -> None:
    go_offline()
    setup_logging()
    params = load_params(params_path)
    paths = params.base.paths
    metrics_path = paths.metrics / "validate.json"
    try:
        result = _validate_into(paths.raw, paths.validated, params.validate_)
    except SystemExit:
        _drop_stale(paths.validated, metrics_path)
        raise
    write_json(metrics_path, _metrics(result))
    log.info("validated %d rows into %s", len(result.profile), paths.validated)


if __name__ == "__main__":
    main()

"""The checks `validate` runs, as Great Expectations suites, and the GX plumbing that runs them.

Row checks look at one sample each (a file that does not decode, a label outside the set, a duplicated id): removing
the row removes the problem, so the `quarantine` policy can set such rows aside. The common ones are here; each
modality adds its own (`Modality.row_checks`, thresholds from `validate.modalities.<name>`). Dataset checks (zero
rows, a class with no row in a split) run on the rows that pass every row check; no row removal fixes them.

Great Expectations takes ~6 s to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.data.manifest import SPLITS
from multimodal.data.params import Validate
from multimodal.data.profile import PRESENT_COUNT
from multimodal.modalities import get_modality
from multimodal.modalities.checks import Check, at, duplicate_of, shown
from multimodal.pipeline.offline import TELEMETRY_OFF

ROW_SUITE = "sample_checks"
DATASET_SUITE = "dataset_checks"


def _decode_failure(modality: str):
    return lambda _index, row, _profile: (modality, row[f"{modality}_error"] or f"{modality} does not decode")


def _utf8_failure(_index: int, row: dict[str, Any], _profile: pd.DataFrame) -> tuple[str, str]:
    return row["utf8_column"], row["utf8_error"]


def _row_checks_common(gx: Any, labels: Sequence[str]) -> list[Check]:
    ex = gx.expectations
    return [
        Check("sample_id_present", "every row has a sample_id",
              ex.ExpectColumnValuesToNotBeNull(column="sample_id"), at("sample_id", "empty sample_id")),
        Check("sample_id_unique", "no sample_id occurs twice",
              ex.ExpectColumnValuesToBeUnique(column="sample_id"),
              duplicate_of("sample_id", "sample_id", "duplicate sample_id: the same id is")),
        Check("utf8", "every cell is valid UTF-8",
              ex.ExpectColumnValuesToBeInSet(column="utf8", value_set=[True]), _utf8_failure),
        Check("label_present", "every row has a label",
              ex.ExpectColumnValuesToNotBeNull(column="label"), at("label", "missing label (empty cell)")),
        Check("label_in_set", f"every label is one of the allowed labels {shown(labels)}",
              ex.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
              at("label", f"label {{label!r}} not in the allowed labels {shown(labels)}")),
        Check("split_in_set", f"every split is one of {list(SPLITS)}",
              ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
              at("split", f"split {{split!r}} is not one of {list(SPLITS)}")),
        Check("any_modality", "every row has at least one modality",
              ex.ExpectColumnValuesToBeBetween(column=PRESENT_COUNT, min_value=1),
              at(PRESENT_COUNT, "no modality present: every modality cell is empty")),
    ]


def _cell_checks(gx: Any, modality: str, reads_file: bool, options: Validate) -> list[Check]:
    """Every present cell decodes (its `probe` succeeds); file contents unique under `validate.unique_content`."""
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    present = Column(f"{modality}_present") == True  # noqa: E712 - builds a GX condition, not a comparison
    what = "path names a readable file inside the dataset folder that decodes" if reads_file else "cell parses"
    checks = [
        Check(f"{modality}_decodes", f"every {modality} {what}",
              ex.ExpectColumnValuesToBeInSet(column=f"{modality}_decodes", value_set=[True], row_condition=present),
              _decode_failure(modality)),
    ]
    if options.unique_content and reads_file:
        checks.append(Check(
            f"{modality}_unique_content", f"no two rows hold the same {modality} bytes",
            ex.ExpectColumnValuesToBeUnique(column=f"{modality}_sha256"),
            duplicate_of(f"{modality}_sha256", modality, f"duplicate content: the same {modality} bytes are"),
        ))
    return checks


def row_checks(modalities: Sequence[str], labels: Sequence[str], options: Validate) -> list[Check]:
    """Checks on single rows: a failing row can be quarantined. Thresholds come from `options` (params)."""
    gx = import_gx()
    checks = _row_checks_common(gx, labels)
    for name in modalities:
        modality = get_modality(name)
        checks += _cell_checks(gx, name, modality.reads_file, options)
        checks += modality.row_checks(gx.expectations, options.modalities[name])
    return checks


def dataset_checks(labels: Sequence[str]) -> list[Check]:
    """Checks on the rows that pass every row check: failures no row removal can fix."""
    gx = import_gx()
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
    gx = import_gx()
    expectations = []
    for check in checks:
        expectation = check.expectation.copy(update={"meta": {"check": check.name}, "notes": check.meaning})
        expectations.append(expectation)
    # Passed to the constructor: `suite.add_expectation` needs an active data context (it checks a store).
    return gx.ExpectationSuite(name=name, expectations=expectations)


def import_gx():
    """Import Great Expectations with its analytics switched off (set before the import, as GX reads it then)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", TELEMETRY_OFF["GX_ANALYTICS_ENABLED"])
    # GX logs ~200 INFO lines per run (config loading, docs registration): keep its warnings only.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations

    return great_expectations


def gx_context(workdir: Path | None) -> Any:
    """An ephemeral GX context, or a file context in `workdir` (needed to render Data Docs)."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if workdir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(workdir))
    # GX draws a "Calculating Metrics" bar per expectation batch: noise next to our own progress bar.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_checkpoint(context: Any, name: str, table: pd.DataFrame, suite: Any, docs: bool) -> Any:
    """Run `suite` over `table` through a Checkpoint named `name`; with `docs`, it also updates the Data Docs."""
    gx = import_gx()
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


def copy_docs(workdir: Path, docs_dir: Path) -> None:
    """Copy the rendered Data Docs site out of the GX project: manifest content escaped, nothing loaded from the web."""
    from multimodal.data.data_docs import publish  # late: only runs that write Data Docs need it

    publish(workdir, docs_dir)


def gx_json(gx_result: Any) -> str:
    return json.dumps(gx_result.to_json_dict(), indent=2, sort_keys=True, default=str) + "\n"



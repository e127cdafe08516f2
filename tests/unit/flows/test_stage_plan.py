"""Which stages a flow run reproduces, given the DAG and one DVC status read (no DVC, no Prefect)."""

from __future__ import annotations

from flows.dvc_tools import Stage
from flows.stage_plan import stale_stages

# The project's shape: demo -> ingest -> validate -> preprocess@{image,audio,text} -> align -> tune -> evaluate
# -> report, with baseline beside align (reads the preprocessed data, feeds evaluate).
PIPELINE = (
    Stage("demo"),
    Stage("ingest", ("demo",)),
    Stage("validate", ("ingest",)),
    Stage("preprocess@image", ("validate",)),
    Stage("preprocess@audio", ("validate",)),
    Stage("preprocess@text", ("validate",)),
    Stage("baseline", ("preprocess@image", "preprocess@audio", "preprocess@text")),
    Stage("align", ("preprocess@image", "preprocess@audio", "preprocess@text")),
    Stage("tune", ("align",)),
    Stage("evaluate", ("baseline", "tune")),
    Stage("report", ("evaluate",)),
)
NAMES = {stage.name for stage in PIPELINE}


def test_nothing_changed_runs_nothing() -> None:
    assert stale_stages(PIPELINE, {}) == set()


def test_a_changed_stage_runs_with_all_its_descendants_even_those_dvc_calls_up_to_date() -> None:
    # DVC compares with the files on disk now: tune's outputs are not rewritten yet, so evaluate looks clean.
    assert stale_stages(PIPELINE, {"tune": [{"changed deps": {"params.yaml": {"tune.num_samples": "modified"}}}]}) \
        == {"tune", "evaluate", "report"}


def test_a_changed_branch_leaves_its_siblings_cached() -> None:
    stale = stale_stages(PIPELINE, {"preprocess@audio": [{"changed outs": {"data/shards/audio": "deleted"}}]})
    assert stale == {"preprocess@audio", "baseline", "align", "tune", "evaluate", "report"}
    assert not stale & {"preprocess@image", "preprocess@text", "demo", "ingest", "validate"}


def test_several_changes_and_an_empty_entry() -> None:
    changes = {"report": ["changed command"], "baseline": ["always changed"], "demo": []}  # []: up to date
    assert stale_stages(PIPELINE, changes) == {"baseline", "evaluate", "report"}


def test_a_change_at_the_root_runs_everything() -> None:
    assert stale_stages(PIPELINE, {"demo": ["changed checksum"]}) == NAMES


def test_unknown_status_runs_every_stage_through_dvc() -> None:
    # DVC's lock was busy when the run started: every stage asks DVC itself, as it runs.
    assert stale_stages(PIPELINE, None) == NAMES


def test_order_of_the_stages_does_not_matter_and_foreign_names_are_ignored() -> None:
    changes = {"align": ["changed command"], "some.dvc": ["changed outs"]}
    assert stale_stages(tuple(reversed(PIPELINE)), changes) == {"align", "tune", "evaluate", "report"}

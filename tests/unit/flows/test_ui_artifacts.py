"""The Prefect "experiments" table ranks runs by the validation metric tune selects on, never by test or time,
with the rows `python -m stages.compare` prints (`multimodal.reporting.experiments.comparison`)."""

from __future__ import annotations

from flows.ui_artifacts import experiments_rows
from multimodal.reporting.experiments import Experiment, Ranking, headline_metrics

RANK = Ranking("metrics/tune.json", "best_val_accuracy", "max")
METRICS = headline_metrics("metrics")


def exp(name: str, created: str, val: float | None, test: float, lr: float = 0.001) -> Experiment:
    tune = {} if val is None else {"best_val_accuracy": val}
    headline = {"fused_accuracy": test, "fused_beats_baseline": True, "baseline_accuracy": 0.7}
    return Experiment(name, name[:7], created, False, {"tune.space.lr": lr, "base.seed": 42},
                      {"metrics/tune.json": tune, "metrics/headline.json": headline})


RUNS = [
    exp("newest-worst-val", "2026-01-05", 0.80, test=0.99, lr=0.01),  # best on test: must not lead
    exp("old-best-val", "2026-01-01", 0.95, test=0.90),
    exp("middle", "2026-01-03", 0.90, test=0.93),
    exp("no-tune-metrics", "2026-01-06", None, test=0.97),
]


def test_runs_are_ranked_by_validation_not_by_test_or_time():
    rows = experiments_rows(RUNS, METRICS, limit=10, ranking=RANK)
    assert [r["experiment"] for r in rows] == ["old-best-val", "middle", "newest-worst-val", "no-tune-metrics"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["val_accuracy"] == 0.95 and rows[3]["val_accuracy"] is None
    # The chosen test figures, as compare shows them; a missing one is an empty cell.
    assert rows[0]["test_fused"] == 0.90 and rows[0]["baseline"] == 0.7 and rows[0]["fused-unimodal"] is None
    assert "fused_beats_baseline" not in rows[0]
    assert "tune.space.lr" in rows[0] and "base.seed" not in rows[0]  # only params that differ


def test_min_mode_ranks_the_lowest_first_and_this_run_is_always_listed():
    losses = [exp("a", "2026-01-01", 0.3, 0.9), exp("b", "2026-01-02", 0.1, 0.8), exp("c", "2026-01-03", 0.2, 0.7)]
    loss_rank = Ranking("metrics/tune.json", "best_val_accuracy", "min")
    rows = experiments_rows(losses, [], limit=2, ranking=loss_rank, current="a")
    assert [r["experiment"] for r in rows] == ["b", "c", "a (this run)"]
    assert rows[-1]["rank"] == 3


# ------------------------------------------------------------------------------ manifest content in markdown


def _render(markdown: str) -> str:
    """Markdown as a permissive UI renders it: raw HTML passed through, GFM tables, bare URLs autolinked."""
    import mistune  # a GX dependency: the same CommonMark rules as the Prefect UI's renderer

    return mistune.create_markdown(plugins=["table", "url", "strikethrough"], escape=False)(markdown)


def test_manifest_content_in_the_validation_artifact_renders_as_text():
    from flows.ui_artifacts import validation_markdown
    from tests.unit.hostile import HOSTILE, assert_defused

    report = {
        "success": False, "rows": 3, "labels": ["cat", HOSTILE],
        "failing_rows": [{"row": 2, "sample_id": HOSTILE, "column": "label", "reason": f"label {HOSTILE!r} | x",
                          "file": HOSTILE}],
        "dataset_failures": [f"split 'test' has no valid row of 1 class(es): [{HOSTILE!r}]"],
    }
    html = _render(validation_markdown(report, None))
    text = assert_defused(html, "validation-summary")
    assert "<img" not in html and "<a " not in html  # no image, no link, not even an autolink
    assert text.count(HOSTILE) == 5  # label, sample id, reason, file, dataset failure: each shown verbatim
    assert html.count("<tr>") == 1 + 2 + 1 + 1  # the reason's `|` did not split its cell into a new column


def test_best_config_fence_cannot_be_closed_from_inside():
    from flows.ui_artifacts import best_config_markdown

    # A YAML block scalar whose line is a fence: with a ``` fence around it, it would end the code block.
    text = "note: |\n  ```\n  <script>alert(1)</script>\n"
    html = _render(best_config_markdown(text, "models/best/best_config.yaml"))
    assert "<script>" not in html and "&lt;script&gt;" in html

"""The experiment table of `python -m stages.compare` on a fixed `dvc exp show --json` output."""

from __future__ import annotations

from multimodal.pipeline.metrics_files import headline_of
from multimodal.reporting.experiments import (
    Ranking,
    comparison,
    headline_metrics,
    parse_exp_show,
    ranking_for,
    render,
    short_names,
)

RANK = ranking_for("metrics", "val_accuracy", "max")


def run(rev: str, created: str, params: dict, val: float | None, fused: float, name: str | None = None) -> dict:
    tune = {} if val is None else {"metrics/tune.json": {"data": {"best_val_accuracy": val, "trials": 6}}}
    headline = {"fused_accuracy": fused, "fused_minus_best_unimodal": fused - 0.5, "baseline_accuracy": 0.75,
                "best_unimodal": "audio"}
    return {"rev": rev, "name": name, "data": {
        "timestamp": created, "params": {"params.yaml": {"data": params}},
        "metrics": {**tune, "metrics/headline.json": {"data": headline}}}}


def params(lr: float, dim: int = 64, augment: float = 0.1) -> dict:
    return {"base": {"seed": 42}, "align": {"dim": dim},
            "tune": {"space": {"lr": {"loguniform": [lr, 0.005]}},
                     "fixed": {"augment": {"image": {"noise": augment}, "audio": {"noise_snr_db": [10, 30]}}}},
            "modalities": {"image": {"config": {"hidden_sizes": [16, 32, 64]}}}}


SHOWN = [
    {"rev": "workspace", "name": None, "data": run("workspace", "", params(1e-4), 0.99, 0.99)["data"]},
    {**run("a" * 40, "2026-01-01T00:00:00", params(3e-4), 0.90, 0.92), "name": "main", "experiments": [
        {"name": "newest-worst-val", "revs": [run("b" * 40, "2026-01-05T00:00:00", params(1e-3, dim=128), 0.80, 0.99)]},
        {"name": "best-val", "revs": [run("c" * 40, "2026-01-03T00:00:00", params(3e-4, augment=0.2), 0.95, 0.90)]},
        {"name": "failed", "revs": [run("d" * 40, "2026-01-06T00:00:00", params(3e-4), None, 0.0)]},
    ]},
]


def test_runs_are_ranked_by_validation_with_only_the_params_that_differ():
    runs = parse_exp_show(SHOWN)
    assert [r.name for r in runs] == ["main", "newest-worst-val", "best-val", "failed"]  # workspace left out
    table = comparison(runs, RANK, headline_metrics("metrics"))
    assert [r.name for r in table.runs] == ["best-val", "main", "newest-worst-val", "failed"]
    assert table.params == ["align.dim", "tune.space.lr.loguniform", "tune.fixed.augment.image.noise"]
    rows = table.rows()
    assert list(rows[0])[-4:] == ["val_accuracy", "test_fused", "fused-unimodal", "baseline"]
    assert (rows[0]["val_accuracy"], rows[0]["test_fused"], rows[0]["kind"]) == (0.95, 0.90, "experiment")
    assert rows[1]["kind"] == "baseline" and rows[3]["val_accuracy"] is None


def test_the_table_fits_the_width_and_names_the_params_left_out():
    table = comparison(parse_exp_show(SHOWN), RANK, headline_metrics("metrics"))
    wide = render(table, 100).splitlines()
    assert all(len(line) <= 100 for line in wide)
    assert wide[0].split() == ["experiment", "dim", "loguniform", "noise", "val_accuracy", "test_fused",
                               "fused-unimodal", "baseline"]
    assert wide[2].split() == ["best-val", "64", "[0.0003,0.005]", "0.2", "0.9500", "0.9000", "0.4000", "0.7500"]
    assert wide[3].split()[0] == "main*" and wide[5].split()[4] == "-"
    narrow = render(table, 80).splitlines()
    assert all(len(line) <= 80 for line in narrow)
    assert narrow[0].split() == ["experiment", "dim", "val_accuracy", "test_fused", "fused-unimodal", "baseline"]
    assert narrow[-1].startswith("2 more differing params") and "loguniform, noise" in narrow[-1]


def test_short_names_take_as_many_last_components_as_make_them_unique():
    keys = ["tune.fixed.augment.image.noise", "tune.fixed.augment.audio.noise", "align.dim", "tune.fixed.patience"]
    assert short_names(keys) == {"tune.fixed.augment.image.noise": "image.noise",
                                 "tune.fixed.augment.audio.noise": "audio.noise", "align.dim": "dim",
                                 "tune.fixed.patience": "patience"}


def test_min_mode_ranks_the_lowest_first():
    loss = Ranking("metrics/tune.json", "best_val_accuracy", "min")
    assert [r.name for r in comparison(parse_exp_show(SHOWN), loss, []).runs][:3] == ["newest-worst-val", "main",
                                                                                      "best-val"]


def test_the_headline_is_the_reports_top_level_figures():
    report = {"fusion": "gated", "fused_accuracy": 0.9, "fused_accuracy_ci95_lo": None, "fused_beats_baseline": True,
              "models": {"fused": {"accuracy": 0.9}}, "paired": {}, "intervals": [0.1, 0.2]}
    assert headline_of(report) == {"fusion": "gated", "fused_accuracy": 0.9, "fused_accuracy_ci95_lo": None,
                                   "fused_beats_baseline": True}

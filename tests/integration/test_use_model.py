"""Using the results of a tiny pipeline: `stages.predict` on its manifest agrees with evaluate, and
`stages.compare` ranks the commit and a real experiment on it (`dvc exp run` with a different param)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from flows.workspace import run
from tests.integration.built import Built, copy_built

pytestmark = pytest.mark.integration

EXPERIMENT, STRENGTH = "augment-0", 0.0  # the commit's augment_strength is the repo's (params.yaml)


@pytest.fixture(scope="module")
def project(built: Built, tmp_path_factory) -> Path:
    """A tiny project after `dvc repro` (a copy of the test run's shared one, committed), with predictions of
    models/best on its own manifest (`predict.csv`, `predict.out`), then an experiment that differs from the commit
    in `tune.fixed.augment_strength`."""
    project = copy_built(built, tmp_path_factory.mktemp("use") / "project")
    done = run([sys.executable, "-m", "stages.predict", "--model", "models/best", "--manifest",
                "data/raw/manifest.csv", "--out", "predict.csv", "--batch-size", "16"], project)
    (project / "predict.out").write_text(done.stdout)
    (project / "evaluated.json").write_text((project / "metrics/evaluate.json").read_text())
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    done = run(["dvc", "exp", "run", "-S", f"tune.fixed.augment_strength={STRENGTH}", "-n", EXPERIMENT], project)
    (project / "experiment.out").write_text(done.stdout)
    return project


def runs(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` of HEAD: {name as compare prints it (the commit's ends with *): its params and metrics}."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    [commit] = [rev for rev in shown if rev.get("rev") != "workspace"]
    return {(commit.get("name") or commit["rev"][:7]) + "*": commit["data"],
            **{e["name"]: e["revs"][0]["data"] for e in commit.get("experiments") or []}}


def test_an_experiment_reruns_tune_and_what_follows_it_only(project: Path) -> None:
    # A tune knob changed: not the classical baseline, nothing upstream of tune.
    ran = set(re.findall(r"Running stage '([^']+)'", (project / "experiment.out").read_text()))
    assert ran == {"tune", "ensemble", "evaluate", "compress", "report"}
    found = runs(project)
    assert EXPERIMENT in found and len(found) == 2
    headline = found[EXPERIMENT]["metrics"]["metrics/headline.json"]["data"]
    assert 0.0 <= headline["fused_accuracy"] <= 1.0
    assert found[EXPERIMENT]["params"]["params.yaml"]["data"]["tune"]["fixed"]["augment_strength"] == STRENGTH


def test_predict_on_the_test_rows_scores_what_evaluate_scored(project: Path) -> None:
    with (project / "data/raw/manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    with (project / "predict.csv").open() as handle:
        predicted = list(csv.DictReader(handle))
    assert [r["sample_id"] for r in predicted] == [r["sample_id"] for r in manifest]
    assert all(r["error"] == "" and r["predicted"] for r in predicted)
    test = [(row, p) for row, p in zip(manifest, predicted) if row["split"] == "test"]
    accuracy = sum(row["label"] == p["predicted"] for row, p in test) / len(test)
    report = json.loads((project / "evaluated.json").read_text())
    assert accuracy == pytest.approx(report["fused_accuracy"], abs=1e-12)
    for row, p in test:
        used = set(p["modalities_used"].split("+"))
        assert used == {m for m in ("image", "audio", "text") if row[m]}
    assert "accuracy on the 120 labelled rows with a prediction" in (project / "predict.out").read_text()


def test_compare_prints_the_commit_and_its_experiment_ranked_by_validation_in_100_columns(project: Path) -> None:
    out = run([sys.executable, "-m", "stages.compare", "--width", "100"], project).stdout
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), out
    header = lines[0].split()
    assert header[:2] == ["experiment", "augment_strength"], out
    assert header[-4:] == ["val_accuracy", "test_fused", "fused-unimodal", "baseline"], out
    rows = [line.split() for line in lines[2:4]]
    found = runs(project)
    assert sorted(r[0] for r in rows) == sorted(found), out
    val = {name: data["metrics"]["metrics/tune.json"]["data"]["best_val_accuracy"] for name, data in found.items()}
    assert [val[r[0]] for r in rows] == sorted(val.values(), reverse=True)
    strengths = {float(r[1]) for r in rows}
    assert len(strengths) == 2 and STRENGTH in strengths  # the commit's and the experiment's
    for r in rows:
        assert float(r[-4]) == pytest.approx(val[r[0]], abs=5e-5)
        assert float(r[1]) == found[r[0]]["params"]["params.yaml"]["data"]["tune"]["fixed"]["augment_strength"]


def test_dvc_exp_show_opens_with_the_selecting_metric_then_the_test_figures(project: Path) -> None:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    files = {path for rev in shown if rev.get("data") for path in rev["data"].get("metrics") or {}}
    assert files == {"metrics/tune.json", "metrics/headline.json"}
    columns = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    metrics = [c for c in columns[columns.index("Created") + 1:] if c not in ("parent", "State", "Executor")]
    assert metrics[0] == "best_val_accuracy"
    assert metrics.index("fused_accuracy") < 20 and "models.fused.accuracy" not in columns
    assert not [c for c in columns if c.startswith(("checks.", "present.", "test/", "val/"))]

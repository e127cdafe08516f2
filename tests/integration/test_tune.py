"""The tune stage on a real Ray, in one tiny project: failed trials, impossible resources, an existing cluster,
the unimodal references (Ray tasks, identical run to run, a failing one named) and re-training the best trial alone
(`python -m stages.reproduce_best`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import project_env, run, set_params
from tests.integration.built import Built, copy_built
from tests.integration.ray_head import ray_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ("image", "audio", "text")

# With seed 42 the fourth trial draws the negative learning rate AdamW rejects; the other three succeed.
FAILING_SPACE = {"lr": {"choice": [0.001, -1.0]}, "dropout": {"uniform": [0.0, 0.4]},
                 "fusion": {"choice": ["concat", "gated", "attention"]}}


def stage(project: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", module, *args], project, check=False)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def aligned(built: Built, tmp_path_factory) -> Path:
    """A tiny project with everything `tune` reads (ingest..align), shared by this module's tests."""
    return copy_built(built, tmp_path_factory.mktemp("tune") / "project")


def with_tune(project: Path, **tune) -> Path:
    set_params(project, {("tune", key): value for key, value in
                         {"space": FAILING_SPACE, "num_samples": 3, "max_failures": 0, "address": None,
                          "cpus_per_trial": 1, **tune}.items()})
    return project


@pytest.fixture(scope="module")
def tuned(aligned: Path) -> tuple[Path, subprocess.CompletedProcess, float]:
    """One study with a trial that fails (retried once, from scratch: it fails before its first checkpoint)."""
    start = time.monotonic()
    done = stage(with_tune(aligned, max_failures=1, num_samples=4), "stages.tune")
    return aligned, done, time.monotonic() - start


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tuned) -> None:
    project, done, seconds = tuned
    assert done.returncode == 0, done.stderr[-3000:]
    trials = read_csv(project / "metrics/tune_trials.csv")
    assert [t["trial"] for t in trials] == ["00000", "00001", "00002", "00003"]
    failed = [t for t in trials if t["status"] == "error"]
    ok = [t for t in trials if t["status"] == "ok"]
    assert failed and ok
    assert all(t["error"] == "ValueError: Invalid learning rate: -1.0" and t["epochs"] == "0" for t in failed)
    # ASHA (grace period 1, max 2 epochs) may stop a trial after its first epoch.
    assert all(t["seed"] == "42" and t["epochs"] in ("1", "2") for t in ok)
    epochs = read_csv(project / "metrics/tune_epochs.csv")
    assert [(e["trial"], e["epoch"]) for e in epochs] == \
        [(t["trial"], str(n)) for t in ok for n in range(1, int(t["epochs"]) + 1)]
    # Every accuracy is a count of the validation rows a model sees (those with any input) over their number; a
    # trial's is its best epoch's (the first of equals), the study's best that of its best trial, in every file.
    validated = read_csv(project / "data/validated/manifest.csv")
    n_val = sum(1 for r in validated if r["split"] == "val" and any(r[m] for m in ("image", "audio", "text")))
    assert n_val > 0
    for trial in ok:
        scores = [float(e["val_accuracy"]) for e in epochs if e["trial"] == trial["trial"]]
        assert all(0 <= v <= 1 and abs(v * n_val - round(v * n_val)) < 1e-4 for v in scores), (scores, n_val)
        assert float(trial["val_accuracy"]) == max(scores)
        assert int(trial["best_epoch"]) == scores.index(max(scores)) + 1
    best_row = max(ok, key=lambda t: float(t["val_accuracy"]))  # the first of equals, as trials are in order
    summary = json.loads((project / "metrics/tune.json").read_text())
    assert summary["trials"] == 4 and summary["trials_failed"] == len(failed)
    assert (summary["best_val_accuracy"], summary["best_trial"], summary["best_epoch"]) == \
        (float(best_row["val_accuracy"]), best_row["trial"], int(best_row["best_epoch"]))
    best = project / "models/best"
    recorded = json.loads((best / "trial.json").read_text())
    assert (recorded["value"], recorded["trial"], recorded["best_epoch"], recorded["metric"]) == \
        (summary["best_val_accuracy"], summary["best_trial"], summary["best_epoch"], "val_accuracy")
    assert {"model.safetensors", "model.json", "best_config.yaml", "trial.json"} <= {p.name for p in best.iterdir()}
    assert {p.name for p in (project / "plots/tune").iterdir()} == {
        "val_accuracy_vs_epoch.png", "val_accuracy_vs_lr.png", "val_accuracy_vs_dropout.png",
        "val_accuracy_vs_fusion.png"}
    print(f"study of 4 trials (one failing, retried): {seconds:.0f} s")


def test_the_best_trial_is_reproduced_outside_ray(tuned) -> None:
    project, done, _ = tuned
    assert done.returncode == 0
    reproduced = stage(project, "stages.reproduce_best")
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr[-3000:]
    assert ": reproduced" in reproduced.stdout
    recorded = json.loads((project / "models/best/trial.json").read_text())["value"]
    value = float(reproduced.stdout.split("reproduced ")[1].split(",")[0])
    assert abs(value - recorded) <= 1e-6
    # The check has teeth: a tolerance below zero cannot pass.
    assert stage(project, "stages.reproduce_best", "--tolerance", "-1").returncode == 1


def references(project: Path) -> dict[str, object]:
    """The reference models' files (sha256 of each) and their metrics in tune.json."""
    summary = json.loads((project / "metrics/tune.json").read_text())
    files = {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((project / "models/unimodal").rglob("*")) if p.is_file()}
    return {"files": files, "metrics": {k: v for k, v in summary.items() if k.startswith("unimodal/")}}


def test_each_modality_gets_a_reference_trained_as_a_ray_task(tuned) -> None:
    project, done, _ = tuned
    assert done.returncode == 0, done.stderr[-3000:]
    for modality in MODALITIES:
        folder = project / "models/unimodal" / modality
        assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "model.json", "inputs.json"}
        assert json.loads((folder / "model.json").read_text())["modalities"] == [modality]
        assert 0 <= references(project)["metrics"][f"unimodal/{modality}/val_accuracy"] <= 1
        assert f"unimodal {modality}: " in done.stderr  # its epochs and seconds are logged
    # cpus_per_trial 1 on two CPUs: two tasks at a time, one torch thread each.
    assert "references: 1 candidates for each of 3 modalities, Ray tasks of 1 CPUs and 0 GPUs each, 1 torch threads, " \
           "on cpu" in done.stderr


@pytest.mark.slow  # a second tiny study; bit-identical reruns are also test_pipeline.py's (slow)
def test_a_forced_run_starts_a_fresh_study_with_the_same_outcome(tuned) -> None:
    """`dvc repro --force` after a run that ended: a fresh study (the errored trial fails again in it, deterministic)
    and the same tables. (Before, it restored the finished study, whose errored trial had no config: the table
    crashed with "'NoneType' object has no attribute 'items'".)"""
    project, done, _ = tuned
    assert done.returncode == 0
    tables = {name: (project / "metrics" / name).read_text() for name in ("tune_trials.csv", "tune_epochs.csv")}
    forced = run(["dvc", "repro", "--force", "--single-item", "tune"], project, check=False)
    log = forced.stdout + forced.stderr
    assert forced.returncode == 0, log[-3000:]
    assert "starting a fresh study: the last run of the one in" in log and "(best trial " in log
    assert {name: (project / "metrics" / name).read_text() for name in tables} == tables


FAILING_REFERENCE = """
import sys
from pathlib import Path

import ray

from multimodal.pipeline.ray_cluster import join_ray
from multimodal.tuning.references import Reference, ReferenceFailed, gather

join_ray(None, Path.cwd(), num_cpus=2, object_store_memory=100 * 2**20)


@ray.remote(num_cpus=1)
def reference(modality):
    if modality == "audio":
        raise ValueError("no audio today")
    if modality == "text":
        import time
        time.sleep(600)  # cancelled when audio fails
    return Reference(modality, {}, 0.5, 1, 0.0)


try:
    gather({reference.remote(m): (m, 0) for m in ("image", "audio", "text")}, 0.0)
except ReferenceFailed as error:
    sys.exit(f"FAILED: {error}")
"""


def test_a_failing_reference_fails_naming_its_modality(tmp_path: Path) -> None:
    env = {**project_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", FAILING_REFERENCE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "FAILED: tune: the unimodal reference of 'audio' failed: ValueError: no audio today" in done.stderr


def test_the_stage_fails_naming_the_errors_when_every_trial_fails(aligned) -> None:
    done = stage(with_tune(aligned, space={**FAILING_SPACE, "lr": {"choice": [-1.0]}}, num_samples=2), "stages.tune")
    assert done.returncode != 0
    assert "no trial succeeded" in done.stderr and done.stderr.count("Invalid learning rate: -1.0") >= 2


def test_an_impossible_resource_request_fails_fast(aligned) -> None:
    start = time.monotonic()
    done = stage(with_tune(aligned, cpus_per_trial=64), "stages.tune")
    seconds = time.monotonic() - start
    assert done.returncode != 0
    assert "tune.cpus_per_trial=64" in done.stderr and "CPUs" in done.stderr
    assert seconds < 60, f"took {seconds:.0f} s"


@pytest.mark.slow  # starts a Ray head; tune.address
def test_trials_run_on_an_existing_cluster(aligned) -> None:
    with ray_head(aligned) as (address, node_ids):
        assert len(node_ids) == 1
        space = {**FAILING_SPACE, "lr": {"choice": [0.001]}}
        done = stage(with_tune(aligned, address=address, num_samples=1, space=space), "stages.tune")
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"joined the Ray cluster at {address}" in done.stderr
        results = sorted((aligned / ".ray/results/tune").glob("*/result.json"))
        reported = [json.loads(line) for path in results for line in path.read_text().splitlines()]
        assert len(results) == 1 and len(reported) == 2  # one trial, both epochs (ASHA stops none alone)
        assert {r["node_id"] for r in reported} == set(node_ids)
        # The references are Ray tasks on the cluster too. With one trial, its best is certain at its first report:
        # they started while it trained its second epoch. The same inputs again (as `dvc repro --force` runs the
        # stage): the last run ended, so a fresh study, and the same reference models (early_references.py).
        assert "references start during the search: trial 00000" in done.stderr
        first = references(aligned)
        again = stage(aligned, "stages.tune")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "starting a fresh study: the last run of the one in" in again.stderr
        assert references(aligned) == first


@pytest.mark.slow  # two tiny studies; bench/tune_concurrency.py compares them on the default project
def test_trials_side_by_side_choose_as_one_at_a_time(aligned) -> None:
    """Two trials at once under ASHA, each waiting for its turn at a rung, make every decision of the same study run
    one trial at a time: identical tables, epoch by epoch (multimodal/tuning/rungs.py; docs/tune.md)."""
    space = {"lr": {"loguniform": [0.0003, 0.01]}, "dropout": {"uniform": [0.0, 0.4]},
             "fusion": {"choice": ["concat", "gated"]}}
    asha = {"max_epochs": 4, "grace_period": 1, "reduction_factor": 2}
    tables = {}
    for concurrent in (2, 1):
        done = stage(with_tune(aligned, space=space, num_samples=5, asha=asha, max_concurrent_trials=concurrent),
                     "stages.tune")
        assert done.returncode == 0, done.stderr[-3000:]
        tables[concurrent] = [read_csv(aligned / "metrics" / name) for name in ("tune_trials.csv", "tune_epochs.csv")]
    trials = tables[2][0]
    assert len(trials) == 5 and {t["status"] for t in trials} == {"ok"}
    assert len({t["epochs"] for t in trials}) > 1, "ASHA stopped no trial: the study decides nothing"
    assert tables[2] == tables[1]

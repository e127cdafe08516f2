"""The Prefect flow on the tiny project, against a real Prefect server (one per session, see conftest_prefect).

The first flow run is the test run's shared tiny run (tests/integration/built.py: `python -m flows.pipeline` over a
fresh copy, every stage stale), checked here on the server; the `dvc` commands it started come from the import
hook watching that run. One copy of it serves the later tests, which change its state in file order: cached run,
overrides, failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect.exceptions import SignatureMismatchError

from flows import dvc_tools
from flows.pipeline import FLOW_NAME, REPO, dvc_pipeline
from flows.serve import build_deployment, project_pipeline
from flows.stage_plan import stale_stages
from flows.workspace import run
from tests.integration.built import Built, copy_built
from tests.integration.conftest import TINY_PARAMS

pytestmark = pytest.mark.integration

ARTIFACTS = {"validation-summary", "metrics", "best-config", "confusion-matrix", "experiments"}
T = TypeVar("T")


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """The server records task states, logs and scheduled runs asynchronously: ask until it has them."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not there after {timeout:.0f} s; last answer: {value!r}")
        time.sleep(1)


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def task_runs(flow_run_id: UUID, expected: int) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def fetch():
        with client() as c:
            return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    def settled(runs) -> bool:  # NotReady (upstream failed) is PENDING for good; count it as settled
        return len(runs) >= expected and all(r.state and (r.state.is_final() or r.state.name == "NotReady")
                                             for r in runs)

    return {r.name: r for r in poll(fetch, settled, 60, f"task runs of {flow_run_id}")}


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with client() as c:
        found = c.read_artifacts(artifact_filter=only_this_run)
    return {a.key: a for a in found}


def task_log(task_run_id: UUID, text: str) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    def fetch():
        with client() as c:
            return [log.message for log in c.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))]

    return poll(fetch, lambda lines: any(text in line for line in lines), 30, f"log line {text!r}")


def table(artifact: Any) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def experiments(workspace: Path) -> dict[str, dict]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)
    return {e["name"]: e["revs"][0]["data"] for rev in shown for e in (rev.get("experiments") or [])}


def one_at_a_time(deployment: Any) -> bool:
    """Deployment concurrency is a global concurrency limit owned by the deployment; ENQUEUE makes runs wait."""
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    return (deployment.global_concurrency_limit.limit == 1
            and deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE)


@dataclass(frozen=True)
class FlowRun:
    id: UUID
    name: str
    state: Any
    seconds: float
    dvc_commands: tuple[str, ...]  # the `dvc` processes the run started, e.g. "repro --single-item tune"


def run_flow(workspace: Path, **parameters: Any) -> FlowRun:
    """One flow run in this process (its tasks run in threads here), recording the `dvc` processes it starts."""
    commands: list[str] = []
    stream, run_dvc = dvc_tools.stream, dvc_tools.run_dvc

    def recording_stream(cmd: Any, *args: Any, **kwargs: Any) -> Any:
        commands.append(" ".join(cmd[len(dvc_tools.DVC):]))
        return stream(cmd, *args, **kwargs)

    def recording_run_dvc(ws: Path, *args: str) -> Any:
        commands.append(" ".join(args))
        return run_dvc(ws, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dvc_tools, "stream", recording_stream)
        patch.setattr(dvc_tools, "run_dvc", recording_run_dvc)
        started = time.monotonic()
        state = dvc_pipeline(workspace=str(workspace), return_state=True, **parameters)
        seconds = time.monotonic() - started
    flow_run_id = state.state_details.flow_run_id
    with client() as c:
        name = c.read_flow_run(flow_run_id).name
    return FlowRun(flow_run_id, name, state, seconds, tuple(commands))


def repros(flow: FlowRun) -> list[str]:
    """The stages the run handed to `dvc repro`, in order (a retried stage twice)."""
    return [c.removeprefix("repro --single-item ") for c in flow.dvc_commands if c.startswith("repro ")]


@pytest.fixture(scope="module")
def workspace(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after the first run."""
    return copy_built(built, tmp_path_factory.mktemp("flow") / "project")


@pytest.fixture(scope="module")
def stage_names(workspace: Path) -> list[str]:
    return [s.name for s in dvc_tools.read_pipeline(workspace).stages]


@pytest.fixture(scope="module")
def first_run(built: Built, prefect_api: str) -> FlowRun:
    """The shared tiny run: the flow's first run over a fresh copy, as the server recorded it."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with client() as c:
        found = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    [flow_run] = [r for r in found if Path(r.parameters.get("workspace", "")).resolve() == built.project.resolve()]
    return FlowRun(flow_run.id, flow_run.name, flow_run.state, built.seconds, tuple(built.dvc_commands()))


@pytest.fixture(scope="module")
def second_run(workspace: Path, first_run: FlowRun) -> FlowRun:
    return run_flow(workspace)


# ------------------------------------------------------------------------------ helpers (no server, no DVC run)


def test_describe_changes_reads_dvc_status_json() -> None:
    changes = [{"changed deps": {"multimodal/training/train.py": "modified", "params.yaml": {"tune.lr": "modified"}}},
               {"changed outs": {"models": "deleted"}}, "changed command"]
    assert dvc_tools.describe_changes(changes) == ("changed deps: multimodal/training/train.py (modified), "
                                                   "tune.lr (modified); "
                                                   "changed outs: models (deleted); changed command")


def test_repro_state_comes_from_dvc_status_not_log_wording(tmp_path: Path) -> None:
    # A real one-stage DVC repo: whether the stage ran is DVC's structured answer, before and after an edit.
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "input.txt").write_text("1\n")
    (repo / "dvc.yaml").write_text("stages:\n  copy:\n    cmd: cp input.txt output.txt\n"
                                   "    deps: [input.txt]\n    outs: [output.txt]\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(cmd, repo)
    lines: list[str] = []
    first = dvc_tools.repro(repo, "copy", lines.append)
    assert (first.returncode, first.ran) == (0, True) and "changed" in first.reason, first
    second = dvc_tools.repro(repo, "copy", lambda line: None)
    assert (second.ran, second.reason) == (False, "dvc status: up to date")
    (repo / "input.txt").write_text("2\n")
    third = dvc_tools.repro(repo, "copy", lambda line: None)
    assert third.ran and "input.txt (modified)" in third.reason, third
    assert (repo / "output.txt").read_text() == "2\n"


def test_status_read_once_in_process_and_everything_downstream_of_a_change_runs(tmp_path: Path) -> None:
    # a -> b -> c, and d beside them. After a's input changes, DVC reports only a: b's deps (a's output) are
    # unchanged on disk until a re-runs. The flow must still hand b and c to `dvc repro`; d stays cached.
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "in.txt").write_text("1\n")
    (repo / "other.txt").write_text("x\n")
    stages = {"a": ("in.txt", "a.txt"), "b": ("a.txt", "b.txt"), "c": ("b.txt", "c.txt"), "d": ("other.txt", "d.txt")}
    (repo / "dvc.yaml").write_text("stages:\n" + "".join(
        f"  {name}:\n    cmd: cp {dep} {out}\n    deps: [{dep}]\n    outs: [{out}]\n"
        for name, (dep, out) in stages.items()))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro"]):
        run(cmd, repo)
    pipeline = dvc_tools.read_pipeline(repo, status=True)
    assert [s.name for s in pipeline.stages] == ["a", "b", "c", "d"] and pipeline.changes == {}
    assert stale_stages(pipeline.stages, pipeline.changes) == set()

    (repo / "in.txt").write_text("2\n")
    pipeline = dvc_tools.read_pipeline(repo, status=True)
    # The in-process answer is what `dvc status --json` prints.
    assert pipeline.changes == json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert pipeline.changes == {"a": [{"changed deps": {"in.txt": "modified"}}]}
    assert dvc_tools.stage_changes(repo, "b") == []
    assert stale_stages(pipeline.stages, pipeline.changes) == {"a", "b", "c"}
    assert dvc_tools.read_pipeline(repo).changes is None  # not asked

    # Someone's `dvc` holds the repository lock: no status, so every stage asks DVC itself (with its retries).
    hold = "import time; from dvc.repo import Repo; Repo('.').lock.lock(); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked = dvc_tools.read_pipeline(repo, status=True)
        assert locked.changes is None and len(locked.stages) == 4
        assert stale_stages(locked.stages, locked.changes) == {"a", "b", "c", "d"}
    finally:
        holder.kill()
        holder.wait()


def test_overrides_and_experiment_names() -> None:
    assert dvc_tools.to_overrides({"tune.num_samples": 3, "preprocess.modalities": ["image", "text"],
                                   "ingest.manifest": None, "tune.asha": {"max_epochs": 2}}) == [
        "tune.num_samples=3", 'preprocess.modalities=["image","text"]', "ingest.manifest=null",
        "tune.asha={max_epochs:2}"]
    assert dvc_tools.to_overrides(["align.epochs=2"]) == ["align.epochs=2"]
    assert dvc_tools.experiment_name("crimson-gorilla") == "crimson-gorilla"
    assert dvc_tools.experiment_name("-nightly run..2.lock") == "nightly-run.2"


def test_unknown_override_is_rejected_and_params_yaml_kept(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("# knobs\ntune:\n  num_samples: 6  # trials\n")
    before = params.read_bytes()
    with dvc_tools.overridden_params(params, ["tune.num_samples=2"]):
        assert "num_samples: 2  # trials" in params.read_text()  # DVC's -S code keeps comments
    assert params.read_bytes() == before
    with pytest.raises(dvc_tools.OverrideError, match="tune.nope"):
        with dvc_tools.overridden_params(params, ["tune.nope=1"]):
            pass
    assert params.read_bytes() == before


# --------------------------------------------------------------------------------- deployments (no flow runs)


def test_cron_deployment_gets_runs_scheduled_by_the_server(workspace: Path, prefect_api: str) -> None:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    # Registered without a runner: the server's scheduler creates the runs, nobody executes them.
    deployment_id = build_deployment(name="every-minute", cron="* * * * *").apply()
    try:
        with client() as c:
            deployment = c.read_deployment(deployment_id)
        assert one_at_a_time(deployment)
        assert deployment.schedules[0].schedule.cron == "* * * * *"
        # No workspace parameter: a run cannot be pointed at another folder's dvc.yaml (its commands).
        assert deployment.parameters == {} and "workspace" not in deployment.parameter_openapi_schema["properties"]
        assert deployment.enforce_parameter_schema
        with pytest.raises(SignatureMismatchError, match="workspace"):
            project_pipeline.validate_parameters({"workspace": str(workspace)})  # what the runner does first

        def fetch():
            with client() as c:
                return c.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                )

        scheduled = poll(fetch, lambda runs: len(runs) >= 2, 90, "scheduled runs of the every-minute deployment")
        times = sorted(r.expected_start_time for r in scheduled)
        assert all(t.second == 0 and t.microsecond == 0 for t in times)
        assert (times[1] - times[0]).total_seconds() % 60 == 0
    finally:
        with client() as c:
            c.delete_deployment(deployment_id)  # its runs go with it: nothing left for the scheduler


def test_serve_command_registers_the_scheduled_deployment(workspace: Path, prefect_api: str) -> None:
    # A yearly cron: the served runner must not start a pipeline run while the other tests use the workspace.
    cmd = [sys.executable, "-m", "flows.serve", "--name", "serve-test", "--cron", "0 3 1 1 *"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        from prefect.exceptions import ObjectNotFound

        def fetch():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with client() as c:
                    return c.read_deployment_by_name(f"{FLOW_NAME}/serve-test")
            except ObjectNotFound:
                return None

        # READY once the runner polls for its runs: it is serving, and handles SIGTERM.
        deployment = poll(fetch, lambda d: d is not None and d.status.value == "READY", 90, "the served deployment")
        assert one_at_a_time(deployment)
        assert deployment.schedules[0].schedule.cron == "0 3 1 1 *"
        assert "workspace" not in deployment.parameters
        assert not deployment.paused
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    with client() as c:
        deployment = c.read_deployment_by_name(f"{FLOW_NAME}/serve-test")
        assert deployment.paused  # serve pauses its schedules on shutdown
        c.delete_deployment(deployment.id)


# ------------------------------------------------------------------------------------------------- flow runs


def test_first_run_runs_every_stage_and_publishes_artifacts(
    workspace: Path, first_run: FlowRun, stage_names: list[str]
) -> None:
    assert first_run.state.is_completed(), first_run.state.message
    assert {"preprocess@image", "preprocess@audio", "preprocess@text"} <= set(stage_names)

    runs = task_runs(first_run.id, len(stage_names) + 2)
    for stage in stage_names:
        state = runs[stage].state
        assert (state.type.value, state.name) == ("COMPLETED", "Completed"), (stage, state)
        assert state.message.startswith("dvc: stage ran ("), state.message
    assert repros(first_run) == stage_names  # a fresh workspace: every stage stale, each its own `dvc repro`
    assert runs["tune"].total_run_time.total_seconds() > 1
    # The stage's own output, line by line, in its task's log.
    assert task_log(runs["ingest"].id, "Running stage 'ingest'")
    assert task_log(runs["evaluate"].id, "python -m stages.evaluate")

    found = artifacts(first_run.id)
    assert ARTIFACTS <= set(found)
    assert "Data validation passed" in found["validation-summary"].data
    assert "Data Docs" in found["validation-summary"].data and "index.html" in found["validation-summary"].data
    assert {"metrics/evaluate.json", "metrics/tune.json"} <= {row["file"] for row in table(found["metrics"])}
    assert "fusion:" in found["best-config"].data
    manifest = (workspace / "data/raw/manifest.csv").read_text().splitlines()
    counts = [v for row in table(found["confusion-matrix"]) for v in row.values() if isinstance(v, int)]
    assert sum(counts) == sum(1 for line in manifest if line.endswith(",test"))
    assert first_run.name in {row["experiment"].split(" ")[0] for row in table(found["experiments"])}

    saved = experiments(workspace)[first_run.name]  # the run, saved as an experiment under its name
    assert "metrics/headline.json" in saved["metrics"]  # untracked on the first run, included with `-I`
    assert run(["git", "status", "--porcelain", "params.yaml"], workspace).stdout == ""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium for a headless browser")
def test_flow_run_page_shows_stage_tasks_and_metrics_artifact(
    first_run: FlowRun, stage_names: list[str], prefect_api: str, tmp_path: Path
) -> None:
    """The server's UI (the v2 app under /v2: the v1 app at / drops `?tab=` while the run loads) in Chromium."""
    from html.parser import HTMLParser

    class Text(HTMLParser):  # the page's visible text nodes, stripped; scripts and styles left out
        def __init__(self) -> None:
            super().__init__()
            self.nodes: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("script", "style")

        def handle_data(self, data: str) -> None:
            if not self.skip and data.strip():
                self.nodes.append(data.strip())

    def rendered(url: str, profile: Path) -> list[str]:
        # Virtual time runs the app until its API calls are answered and it is idle; then the DOM is dumped.
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        parser = Text()
        parser.feed(dom)
        return parser.nodes

    page = f"{prefect_api.removesuffix('/api')}/v2/runs/flow-run/{first_run.id}"
    task_runs(first_run.id, len(stage_names) + 2)  # the server has recorded them all before the page asks
    tasks_tab = rendered(f"{page}?tab=TaskRuns", tmp_path / "tasks")
    assert first_run.name in tasks_tab, tasks_tab
    assert set(stage_names) <= set(tasks_tab), set(stage_names) - set(tasks_tab)
    artifacts_tab = rendered(f"{page}?tab=Artifacts", tmp_path / "artifacts")
    assert "metrics" in artifacts_tab, artifacts_tab
    # the artifact's description
    assert any("the metrics files declared in dvc.yaml" in text for text in artifacts_tab), artifacts_tab


def test_second_run_shows_stages_cached_and_starts_no_dvc_process(
    workspace: Path, first_run: FlowRun, second_run: FlowRun, stage_names: list[str]
) -> None:
    assert second_run.state.is_completed(), second_run.state.message
    runs = task_runs(second_run.id, len(stage_names) + 1)
    for stage in stage_names:
        state = runs[stage].state
        assert (state.type.value, state.name) == ("COMPLETED", "Cached"), (stage, state)
        assert state.message == "dvc status: up to date", state.message
    # DVC was asked once, in process: no `dvc` process per stage, no `exp save` of an unchanged workspace.
    assert second_run.dvc_commands == ()
    assert second_run.state.result()["experiment"] is None and "save_experiment" not in " ".join(runs)
    saved = experiments(workspace)
    assert first_run.name in saved and second_run.name not in saved
    # The artifacts are published as on every run; the comparison lists the runs saved so far.
    found = artifacts(second_run.id)
    assert ARTIFACTS <= set(found)
    assert first_run.name in {row["experiment"].split(" ")[0] for row in table(found["experiments"])}


def test_overrides_apply_to_one_run_and_leave_the_workspace_as_found(
    workspace: Path, first_run: FlowRun, second_run: FlowRun, stage_names: list[str]
) -> None:
    params_before = (workspace / "params.yaml").read_bytes()
    lock_before = (workspace / "dvc.lock").read_bytes()
    metrics_before = (workspace / "metrics/evaluate.json").read_bytes()
    # A knob that changes the outputs: evaluate and the report re-run. (A tune knob re-runs tune and all after it,
    # 4 minutes here: test_use_model.py checks that through `dvc exp run`, the flow's first run ran every stage.)
    override = run_flow(workspace, overrides={"evaluate.explain.rows": 1})
    assert override.state.is_completed(), override.state.message
    assert override.state.result()["overrides"] == ["evaluate.explain.rows=1"]

    runs = task_runs(override.id, len(stage_names) + 2)
    rerun = ("evaluate", "report")
    assert {s: runs[s].state.name for s in stage_names} == {s: "Completed" if s in rerun else "Cached"
                                                            for s in stage_names}
    # Only what the change reaches started a `dvc repro` (report: downstream of evaluate, re-checked), in order.
    assert repros(override) == list(rerun)
    # The workspace is back on its baseline: params, lock and outputs as before, nothing for DVC to redo.
    assert (workspace / "params.yaml").read_bytes() == params_before
    assert (workspace / "dvc.lock").read_bytes() == lock_before
    assert (workspace / "metrics/evaluate.json").read_bytes() == metrics_before
    status = run(["dvc", "status", "--json"], workspace).stdout
    assert json.loads(status or "{}") == {}, status
    saved = experiments(workspace)
    explain = {name: saved[name]["params"]["params.yaml"]["data"]["evaluate"]["explain"]["rows"]
               for name in (override.name, first_run.name)}
    assert explain == {override.name: 1, first_run.name: TINY_PARAMS["evaluate", "explain"]["rows"]}
    assert saved[override.name]["metrics"]["metrics/headline.json"]["data"]["n_test"] > 0


def test_failing_stage_fails_its_task_and_the_flow_with_the_stage_error_without_a_retry(
    workspace: Path, second_run: FlowRun, stage_names: list[str]
) -> None:
    params_before = (workspace / "params.yaml").read_bytes()
    # A broken param: only `evaluate` reads it, and its params check exits non-zero naming the problem.
    failed = run_flow(workspace, overrides={"evaluate.batch_size": 0}, retries=1, retry_delay_seconds=0)

    assert failed.state.is_failed()
    assert "evaluate" in failed.state.message and "evaluate.batch_size" in failed.state.message, failed.state.message
    runs = task_runs(failed.id, len(stage_names))
    evaluate = runs["evaluate"]
    # Retries cover only a busy DVC lock: a params error fails the same way again, so it is not retried.
    assert evaluate.state.is_failed() and evaluate.run_count == 1
    assert "greater than or equal to 1" in evaluate.state.message
    # Upstream of evaluate all cached; the report, downstream (and a reader of `evaluate` params), never ran.
    assert all(runs[s].state.name == "Cached" for s in stage_names if s not in ("evaluate", "report")), runs
    assert not runs["report"].state.is_completed(), runs["report"].state
    assert repros(failed) == ["evaluate"]  # the stage once; cached ones start no process
    assert "save_experiment" not in " ".join(runs)  # a failed run is not recorded as an experiment
    assert failed.name not in experiments(workspace)
    assert (workspace / "params.yaml").read_bytes() == params_before

"""The DVC pipeline as a Prefect flow: one task per `dvc.yaml` stage, DVC deciding what is up to date.

    python -m flows.pipeline [--workspace .] [-S tune.num_samples=3 ...]     # one run, from a shell
    python -m flows.serve --cron "0 3 * * *"                                   # a scheduled deployment

A run: take the workspace lock -> apply param overrides to params.yaml (as `dvc exp run -S` does) -> read the
stage graph and every stage's status from DVC, in process -> per stage, in topological order, a task: Cached at
once if DVC found it up to date with no stale stage upstream (`flows.stage_plan`), else `dvc repro --single-item
<stage>` -> `dvc exp save -n <flow-run-name>` if a stage was stale or params were overridden -> publish artifacts
-> with overrides, put params.yaml, dvc.lock and the outputs back as they were (also on failure), as
`dvc exp run --temp` would leave them.

Stages run one at a time. `dvc repro` holds DVC's repository lock (`.dvc/tmp/lock`) for its whole duration, so
a second `dvc repro` in the same workspace fails ("Unable to acquire lock"); the preprocess@<modality> stages
are independent in the graph, but cannot run concurrently in one workspace. The task runner therefore has one
worker; tasks are still submitted with their upstream futures, so the Prefect graph shows DVC's edges, and a
failure leaves independent stages running (like `dvc repro --keep-going`) and dependants NotReady.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows import dvc_tools, stage_plan, ui_artifacts
from flows.local_server import temporary_server_timeout
from flows.params import load_flow
from flows.workspace_lock import workspace_lock
from multimodal.reporting.experiments import headline_metrics, ranking_for

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME = "dvc-pipeline"


class StageFailed(RuntimeError):
    """A stage's `dvc repro` exited non-zero; the message carries the end of its output."""


class StageTimeout(StageFailed):
    """A stage ran past its limit (params.yaml `flow`); its process group was killed and its outputs put back."""


def retry_if_lock_busy(task: Any, task_run: Any, state: State) -> bool:
    """Only a stage that found DVC's lock held by another `dvc` process is retried: a failed stage (a params
    error, a bug, a timeout) would fail the same way again, after redoing its work (a whole tune)."""
    return isinstance(state.data, dvc_tools.DvcLockBusy)


# Prefect's own caching is off (NO_CACHE): whether a stage is up to date is DVC's decision (its status).
# retries: set per run from params (`flow.lock_retries`); retry_if_lock_busy decides which failures they cover.
@task(retries=0, cache_policy=NO_CACHE, task_run_name="{stage}", retry_condition_fn=retry_if_lock_busy)
def run_stage(workspace: str, stage: str, up_to_date: bool = False, timeout_s: float | None = None,
              timeout_key: str = "", deadline: float | None = None) -> State:
    """`dvc repro --single-item <stage>`, its output streamed line by line into this task's log.

    up_to_date: DVC said so when the run started and nothing upstream runs, so no `dvc` process is needed.
    timeout_s: the stage's limit (`timeout_key` names its params key); deadline: the run's end (`time.time()`, from
    `flow.timeout_s`), whichever comes first.
    """
    if up_to_date:
        return Completed(name="Cached", message=dvc_tools.UP_TO_DATE)
    logger = get_run_logger()
    limit, key = timeout_s, timeout_key
    if deadline is not None and (limit is None or deadline - time.time() < limit):
        limit, key = max(0.0, deadline - time.time()), "flow.timeout_s, the whole run"
    started = time.monotonic()
    result = dvc_tools.repro(Path(workspace), stage, on_line=logger.info, timeout=limit)
    if result.timed_out:
        raise StageTimeout(f"stage '{stage}' timed out after {time.monotonic() - started:.0f} s ({key} in "
                           "params.yaml): its processes were killed and its outputs put back as dvc.lock has them")
    if result.stopped:
        raise StageFailed(f"stage '{stage}' stopped: the flow run is ending; its outputs were put back")
    if result.returncode != 0:
        tail = "\n".join(result.tail)
        raise StageFailed(f"stage '{stage}': dvc repro exited {result.returncode}\n{tail}")
    if not result.ran:
        return Completed(name="Cached", message=result.reason)
    return Completed(message=f"{result.reason}, {time.monotonic() - started:.1f} s")


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def save_experiment(workspace: str, include: list[str]) -> str:
    """`dvc exp save -n <flow run name>`: this run becomes a row of `dvc exp show`, beside local experiments."""
    name = dvc_tools.experiment_name(flow_run.get_name() or "prefect-run")
    run_id = str(flow_run.get_id() or "")
    saved = dvc_tools.save_experiment(Path(workspace), name, f"prefect flow run {name} ({run_id})", include,
                                      fallback_suffix=run_id[:8] or str(int(time.time())))
    get_run_logger().info("saved DVC experiment %s", saved)
    return saved


def _read(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _data_docs(ws: Path, report: dict[str, Any], params: Any) -> Path | None:
    """The Great Expectations Data Docs index: where the report says, else where params put it."""
    candidates = [report.get("docs"), params.validate.docs_dir,
                  params.base.paths.validated / "docs"]
    for candidate in candidates:
        if isinstance(candidate, (str, Path)) and candidate:
            path = ws / candidate
            path = path / "index.html" if path.is_dir() else path
            if path.name == "index.html" and path.is_file():
                return path.resolve()
    return None


@task(cache_policy=NO_CACHE)
def publish_artifacts(workspace: str, pipeline: dvc_tools.Pipeline, experiment: str | None, recent: int) -> list[str]:
    """Validation summary, metrics, best config, confusion matrix and recent experiments, as UI artifacts."""
    from multimodal.data.params import VALIDATE
    from multimodal.pipeline.params import Schema, load_keys
    from multimodal.tuning.params import Tune

    ws = Path(workspace)
    params = load_keys(ws / "params.yaml", VALIDATE | Schema({"tune": Tune}),
                       keys=("validate.docs_dir", "tune.metric", "tune.mode"))
    paths = params.base.paths  # the same paths dvc.yaml templates its outs from
    published = []

    report = ws / paths.validated / "report.json"
    if report.exists():
        content = _read(report)
        markdown = ui_artifacts.validation_markdown(content, _data_docs(ws, content, params))
        create_markdown_artifact(markdown, key="validation-summary", description=str(report.relative_to(ws)))
        published.append("validation-summary")

    # The DVC metrics (headline figures) and the git-kept JSON reports beside them (per-model details, checks).
    reports = [p for p in pipeline.git_outputs if Path(p).parent == Path(paths.metrics)]
    files = dict.fromkeys([*pipeline.metrics, *reports])
    metrics = {m: _read(ws / m) for m in files if Path(m).suffix in (".json", ".yaml") and (ws / m).is_file()}
    if metrics:
        rows = ui_artifacts.metrics_rows(metrics)
        create_table_artifact(rows, key="metrics",
                              description="the metrics files declared in dvc.yaml and the JSON reports beside them")
        published.append("metrics")

    best = ws / paths.models / "best" / "best_config.yaml"
    if best.exists():
        rel = str(best.relative_to(ws))
        create_markdown_artifact(ui_artifacts.best_config_markdown(best.read_text(), rel), key="best-config",
                                 description=rel)
        published.append("best-config")

    for plot in pipeline.plots:
        if plot.props.get("template") == "confusion" and (ws / plot.path).exists():
            rows = ui_artifacts.confusion_rows(ui_artifacts.confusion_records(ws / plot.path), plot)
            create_table_artifact(rows, key="confusion-matrix", description=f"counts from {plot.path}")
            published.append("confusion-matrix")

    if recent > 0:
        # Runs are ranked by the metric tune selects on (validation), never by a test metric.
        ranking = ranking_for(paths.metrics, params.tune.metric, params.tune.mode)
        rows = ui_artifacts.experiments_rows(dvc_tools.list_experiments(ws), headline_metrics(paths.metrics),
                                             recent, ranking, current=experiment)
        create_table_artifact(rows, key="experiments",
                              description=f"`dvc exp show`: the {recent} best runs on this baseline by "
                                          f"{ranking.column} ({params.tune.mode})")
        published.append("experiments")
    get_run_logger().info("published artifacts: %s", ", ".join(published) or "none")
    return published


def _run_stages(ws: Path, stages: tuple[dvc_tools.Stage, ...], stage_task: Any, stale: set[str],
                limits: Any, deadline: float) -> dict[str, State]:
    """Submit each stage with its upstream futures (the UI graph shows DVC's edges); raise if any failed.

    Stages not in `stale` are Cached without a `dvc` process. The task runner has one worker and takes tasks in
    submission order, which is topological, so each stage starts after its upstream ones without a worker ever
    blocking on a future that is queued behind it. Each stage gets its limit from `limits` (params `flow`).
    """
    futures: dict[str, Any] = {}
    for stage in stages:
        timeout_s, key = limits.stage_timeout(stage.name)
        futures[stage.name] = stage_task.submit(str(ws), stage.name, stage.name not in stale, timeout_s, key,
                                                deadline, wait_for=[futures[u] for u in stage.upstream])
    wait(list(futures.values()))
    states = {name: future.state for name, future in futures.items()}
    failed = [name for name, state in states.items() if state.is_failed() or state.is_crashed()]
    if failed:
        # The tasks' own exceptions: their messages end with the stage's output, i.e. its error.
        raise StageFailed("\n".join(str(futures[name].result(raise_on_failure=False)) for name in failed))
    not_done = [name for name, state in states.items() if not state.is_completed()]
    if not_done:
        raise StageFailed(f"stages did not complete: {not_done}")
    return states


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1))
def dvc_pipeline(
    workspace: str = str(REPO),
    overrides: dict[str, Any] | list[str] | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    save_as_experiment: bool = True,
    artifacts: bool = True,
    recent_experiments: int = 10,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline in `workspace`, one task per stage, and save the run as a DVC experiment.

    overrides: params for this run only, `{"tune.num_samples": 3}` or `["tune.num_samples=3"]` (the syntax of
        `dvc exp run -S`); the run is saved as an experiment and the workspace (params.yaml, dvc.lock, outputs)
        restored afterwards, also when the run fails.
    retries / retry_delay_seconds: per stage, only when another `dvc` process holds DVC's lock (default: params
        `flow.lock_retries` / `flow.lock_retry_delay_s`); no other failure is retried.
    artifacts: publish the UI artifacts; recent_experiments: rows of the experiment comparison (0: none).
    Limits (params `flow`): each stage's time, the whole run's time, how long to wait for another run's workspace.
    """
    logger = get_run_logger()
    ws = Path(workspace).resolve()
    before = load_flow(ws)  # as params.yaml says before this run's overrides: how long to wait, and for the run
    deadline = time.time() + before.timeout_s  # the run's slot, waiting for the workspace included
    requested = dvc_tools.to_overrides(overrides)
    holder = f"flow run '{flow_run.get_name()}' ({flow_run.get_id()})"
    with (
        workspace_lock(ws, before.workspace_wait_s, holder, on_wait=logger.info),
        # Overrides make an experiment: the workspace goes back to its baseline afterwards, lock and outputs too.
        dvc_tools.restored_workspace(ws, dvc_tools.read_pipeline(ws).git_outputs) if requested else nullcontext(),
        dvc_tools.overridden_params(ws / "params.yaml", requested) as applied,
        # Innermost, so it ends first: no stage process outlives the run or writes while the workspace is restored.
        dvc_tools.stages_stopped_on_exit(ws),
    ):
        if applied:
            logger.info("params overridden for this run: %s", applied)
        limits = load_flow(ws)  # after the overrides: `-S flow.stage_timeouts.tune=...` holds for this run
        # Read after the overrides: `foreach` stages expand from params (preprocess.modalities).
        pipeline = dvc_tools.read_pipeline(ws, status=True)
        limits.check_stages([s.name for s in pipeline.stages])
        stale = stage_plan.stale_stages(pipeline.stages, pipeline.changes)
        logger.info("DVC stages in order: %s; to reproduce: %s", [s.name for s in pipeline.stages],
                    [s.name for s in pipeline.stages if s.name in stale])
        stage_task = run_stage.with_options(
            retries=limits.lock_retries if retries is None else retries,
            retry_delay_seconds=limits.lock_retry_delay_s if retry_delay_seconds is None else retry_delay_seconds)
        states = _run_stages(ws, pipeline.stages, stage_task, stale, limits, deadline)
        # Nothing stale and no overrides: nothing was reproduced, so there is no new result to record; saving would
        # add another copy of the workspace as it already was (usually the last run's) to `dvc exp show`.
        experiment = None
        if save_as_experiment and (stale or applied):
            experiment = save_experiment(str(ws), list(pipeline.git_outputs))
        elif save_as_experiment:
            logger.info("every stage was up to date: nothing new to save as a DVC experiment")
        published = publish_artifacts(str(ws), pipeline, experiment, recent_experiments) if artifacts else []
    return {
        "experiment": experiment,
        "stages": {name: state.name for name, state in states.items()},
        "overrides": applied,
        "artifacts": published,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the DVC pipeline once as a Prefect flow.")
    parser.add_argument("--workspace", default=str(REPO), help="the DVC repo to reproduce (default: this one)")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                        help="param override for this run, as in `dvc exp run -S` (repeatable)")
    parser.add_argument("--retries", type=int, default=None,
                        help="retries of a stage that finds DVC's lock busy (default: params flow.lock_retries)")
    parser.add_argument("--no-experiment", action="store_true", help="do not `dvc exp save` the run")
    parser.add_argument("--no-artifacts", action="store_true", help="do not publish the UI artifacts")
    args = parser.parse_args(argv)
    # With no PREFECT_API_URL, Prefect starts a temporary server for the run: give it time on a loaded machine.
    with temporary_server_timeout(load_flow(Path(args.workspace)).server_startup_timeout_s):
        try:
            state = dvc_pipeline(workspace=args.workspace, overrides=args.overrides or None, retries=args.retries,
                                 save_as_experiment=not args.no_experiment, artifacts=not args.no_artifacts,
                                 return_state=True)
        except httpx.TransportError as err:  # the server went away (Prefect's client retried first)
            raise SystemExit(server_gone_message(err)) from None
    raise SystemExit(0 if state.is_completed() else 1)


def server_gone_message(err: Exception) -> str:
    """What a run whose Prefect server stopped answering did, and what to do about its record on the server."""
    from prefect.settings import PREFECT_API_URL

    return (f"the flow run stopped: the Prefect API ({PREFECT_API_URL.value() or 'temporary server'}) stopped "
            f"answering ({err}). The stage that was running went on to its end (dvc.lock records what finished); "
            "the workspace is restored and unlocked. The server still shows the run as "
            "Running: once it is back, cancel that run there (prefect flow-run cancel <id>) and run again.")


if __name__ == "__main__":
    main()

"""What the Prefect flow asks of DVC, with no Prefect in it: the stage graph, one stage's repro, params overrides,
experiments.

The DAG is read from DVC's own index (`dvc.repo.Repo(...).index.graph`), so `dvc.yaml` stays the only definition
of the pipeline; `foreach` stages arrive expanded (`preprocess@image`, ...). DVC alone decides whether a stage is up
to date: its status is asked in process (what `dvc status --json` prints, without a `dvc` process per question),
and a stage runs through `dvc repro --single-item`. Overrides use the code behind `dvc exp run -S` (Hydra override
grammar), and a run is recorded with `dvc exp save`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import stage_process
from flows.stage_process import Streamed
from flows.workspace import project_env
from multimodal.reporting.experiments import Experiment, parse_exp_show
from multimodal.storage.io import write_bytes_atomic

log = logging.getLogger(__name__)

DVC = [sys.executable, "-m", "dvc"]
UP_TO_DATE = "dvc status: up to date"  # a Cached stage's message


# --------------------------------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Stage:
    """One DVC stage as the flow needs it; `name` is what `dvc repro` accepts (`preprocess@image`)."""

    name: str
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plot:
    path: str
    props: Mapping[str, Any] = field(default_factory=dict)  # template, x, y as declared in dvc.yaml


@dataclass(frozen=True)
class Pipeline:
    """The stages in a topological order (ties in `dvc.yaml` order) plus the outputs DVC declares."""

    stages: tuple[Stage, ...]
    metrics: tuple[str, ...]  # declared `metrics:` files, in stage order
    plots: tuple[Plot, ...]
    git_outputs: tuple[str, ...]  # `cache: false` outputs: git keeps them, so experiments must too
    # With `read_pipeline(status=True)`: the stages DVC finds changed, `{stage: what changed}` as `dvc status --json`
    # lists them. None: not asked, or DVC's lock was busy.
    changes: Mapping[str, list[Any]] | None = None


def read_pipeline(workspace: Path, status: bool = False) -> Pipeline:
    """Read the stage graph and declared outputs from DVC's index (no second DAG in Python); with `status`, also
    every stage's DVC status, from the same index under DVC's repository lock (as `dvc status` takes it)."""
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    with Repo(str(workspace)) as repo:
        if status:
            try:
                with lock_repo(repo):
                    return _pipeline(repo, status=True)
            except LockError as err:  # someone's `dvc repro`: each stage then asks DVC itself, with retries
                log.warning("dvc status not read, every stage will ask DVC itself: %s", err)
        return _pipeline(repo, status=False)


def _address(repo: Any, stage: Any) -> str:
    # `stage.addressing` is relative to the process cwd; `dvc repro` runs with cwd=workspace.
    dvcfile = os.path.relpath(stage.dvcfile.path, repo.root_dir)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _pipeline_stages(repo: Any) -> list[Any]:
    from dvc.stage import PipelineStage

    # Only stages with a command are run; `.dvc` data sources have nothing to reproduce.
    return [s for s in repo.index.stages if isinstance(s, PipelineStage)]


def _changes(stage: Any) -> list[Any]:
    # What `dvc status <stage>` asks (Repo.status -> Stage.status); its one key is `addressing`, cwd-relative.
    return next(iter(stage.status(check_updates=True).values()), [])


def _pipeline(repo: Any, status: bool) -> Pipeline:
    import networkx as nx

    stages = _pipeline_stages(repo)
    order = {s: i for i, s in enumerate(stages)}
    graph = repo.index.graph.subgraph(stages)  # DVC's edges point from a stage to the stages it depends on
    ordered = list(nx.lexicographical_topological_sort(graph.reverse(copy=False), key=order.__getitem__))
    nodes, metrics, plots, git_outputs, changes = [], [], [], [], {}
    for stage in ordered:
        upstream = sorted(graph.successors(stage), key=order.__getitem__)
        nodes.append(Stage(_address(repo, stage), tuple(_address(repo, u) for u in upstream)))
        if status and (changed := _changes(stage)):
            changes[_address(repo, stage)] = changed
        for out in stage.outs:
            path = os.path.relpath(out.fs_path, repo.root_dir)
            if out.metric:
                metrics.append(path)
            if out.plot:
                plots.append(Plot(path, dict(out.plot) if isinstance(out.plot, dict) else {}))
            if not out.use_cache:
                git_outputs.append(path)
    return Pipeline(tuple(nodes), tuple(metrics), tuple(plots), tuple(git_outputs), changes if status else None)


# ------------------------------------------------------------------------------------------- running commands


def dvc_env() -> dict[str, str]:
    """The stages' environment (telemetry off, hub offline) with unbuffered Python so output streams live."""
    return {**project_env(), "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class ReproResult:
    stage: str
    returncode: int
    ran: bool  # DVC executed the stage's command
    reason: str  # DVC's own words for what it did
    tail: tuple[str, ...]
    timed_out: bool = False  # killed at its time limit, its outputs put back as dvc.lock has them
    stopped: bool = False  # killed because the flow run is ending


# DVC's words when another `dvc` process holds the repository (`.dvc/tmp/lock`) or an output (`.dvc/tmp/rwlock`):
# the one failure that can pass on a retry.
LOCK_BUSY = ("Unable to acquire lock", "it is being blocked by")


class DvcLockBusy(RuntimeError):
    """Another `dvc` process holds this workspace's DVC lock: worth retrying once it is done."""


def lock_busy(output: Sequence[str]) -> bool:
    return any(words in line for line in output for words in LOCK_BUSY)


def stream(cmd: Sequence[str], cwd: Path, on_line: Callable[[str], Any], tail_lines: int = 25, *,
           timeout: float | None = None, name: str = "") -> Streamed:
    """`cmd` in the stages' environment, in a process group of its own (`flows.stage_process.stream`)."""
    return stage_process.stream(cmd, cwd, on_line, tail_lines, env=dvc_env(), timeout=timeout, name=name)


def reset_stage(workspace: Path, stage: str) -> None:
    """Put a killed stage's outputs back as `dvc.lock` has them (DVC removed them before running the stage, and the
    stage may have written half of them), so `dvc status` is what it was before the run."""
    done = run_dvc(workspace, "checkout", "--force", stage)
    if done.returncode != 0:  # e.g. a stage that never completed has nothing in dvc.lock to check out
        log.warning("dvc checkout %s, putting its outputs back, exited %d: %s", stage, done.returncode,
                    (done.stderr or done.stdout)[-2000:])


@contextmanager
def stages_stopped_on_exit(workspace: Path) -> Iterator[None]:
    """When the block ends (a failure, a cancellation, a timeout), stop the stage processes still running in
    `workspace`, as a group each, and put their outputs back, before anything else touches the workspace; tasks
    queued behind them start no `dvc` once the block has ended."""
    stage_process.allow(workspace)
    try:
        yield
    finally:
        for stage in stage_process.stop_all(workspace):
            log.warning("stage %s stopped: the flow run is ending; its outputs are put back", stage)
            reset_stage(workspace, stage)


def stage_changes(workspace: Path, stage: str) -> list[Any]:
    """DVC's structured answer for this stage alone (as `dvc status --json <stage>`, asked in process): [] when it
    is up to date. Raises DVC's LockError while someone else's `dvc` holds the repository (the task retries)."""
    from dvc.repo import Repo, lock_repo

    with Repo(str(workspace)) as repo, lock_repo(repo):
        for candidate in _pipeline_stages(repo):
            if _address(repo, candidate) == stage:
                return _changes(candidate)
    raise ValueError(f"no stage {stage!r} in {workspace}")


def describe_changes(changes: Sequence[Any]) -> str:
    """`dvc status --json` entries in one line, e.g.
    `changed deps: multimodal/training/train.py (modified); params: tune.lr`."""
    parts = []
    for change in changes:
        if isinstance(change, str):  # "changed command", "always changed"
            parts.append(change)
            continue
        for kind, what in change.items():
            items = []
            for path, state in (what or {}).items():
                if isinstance(state, dict):  # params.yaml: {key: "modified", ...}
                    items += [f"{key} ({how})" for key, how in state.items()]
                else:
                    items.append(f"{path} ({state})")
            parts.append(f"{kind}: {', '.join(items)}")
    return "; ".join(parts) or "changed"


def repro(workspace: Path, stage: str, on_line: Callable[[str], Any], timeout: float | None = None) -> ReproResult:
    """`dvc repro --single-item <stage>`: DVC checks deps, params and outs and runs the stage only if needed.

    Whether it had to do anything comes from DVC's status before the run, not from DVC's log wording.
    The one thing status cannot tell is a restore from DVC's run-cache (same deps seen before, outputs checked
    out without running); that is read from DVC's message, and a reworded message only makes it show as a run.
    Past `timeout` seconds the stage's process group is killed and its outputs put back (`reset_stage`).
    Raises DvcLockBusy while another `dvc` process holds the workspace.
    """
    from dvc.lock import LockError

    started = time.monotonic()
    try:
        changes = stage_changes(workspace, stage)
    except LockError as err:
        raise DvcLockBusy(f"stage '{stage}': {err}") from None
    restored = False

    def collect(line: str) -> None:
        nonlocal restored
        restored = restored or f"Stage '{stage}' is cached - skipping run" in line
        on_line(line)

    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    done = stream([*DVC, "repro", "--single-item", stage], workspace, collect, timeout=left, name=stage)
    if done.timed_out:
        reset_stage(workspace, stage)
    elif done.returncode != 0 and not done.stopped and lock_busy(done.tail):
        raise DvcLockBusy(f"stage '{stage}': another dvc process holds the workspace\n" + "\n".join(done.tail))
    flags = {"timed_out": done.timed_out, "stopped": done.stopped}
    if not changes:
        return ReproResult(stage, done.returncode, False, UP_TO_DATE, done.tail, **flags)
    what = describe_changes(changes)
    if restored:
        return ReproResult(stage, done.returncode, False, f"dvc: restored from the run-cache ({what})", done.tail,
                           **flags)
    return ReproResult(stage, done.returncode, True, f"dvc: stage ran ({what})", done.tail, **flags)


def run_dvc(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], cwd=workspace, env=dvc_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------------ overrides


class OverrideError(ValueError):
    """An override that `dvc exp run -S` would also reject (unknown key, bad syntax)."""


def _hydra_value(value: Any) -> str:
    """A JSON value in Hydra override syntax: what `-S key=<this>` would say."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # quoted: "3" stays a string, `a,b` is not a sweep
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    raise OverrideError(f"cannot express {value!r} ({type(value).__name__}) as a params.yaml value")


def to_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """`{"tune.num_samples": 3}` or `["tune.num_samples=3"]` (exactly `dvc exp run -S` syntax) -> `-S` strings."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(item) for item in overrides]


@contextmanager
def overridden_params(params_file: Path, overrides: Sequence[str]) -> Iterator[list[str]]:
    """Apply `-S`-style overrides to params.yaml for the block; put the original bytes back afterwards, always."""
    if not overrides:
        yield []
        return
    # DVC's own implementation of `exp run -S`: same grammar, comments and key order in params.yaml survive.
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    original = params_file.read_bytes()
    try:
        try:
            apply_overrides(params_file, list(overrides))
        except InvalidArgumentError as err:
            raise OverrideError(f"invalid overrides {list(overrides)}: {err.__cause__ or err}") from None
        yield list(overrides)
    finally:
        write_bytes_atomic(params_file, original)


@contextmanager
def restored_workspace(workspace: Path, git_outputs: Sequence[str]) -> Iterator[None]:
    """When the block ends (also on failure), put the workspace back as it was: params.yaml, dvc.lock and the
    outputs git keeps (`cache: false`) byte for byte, and the cached outputs as dvc.lock says (`dvc checkout`).

    A run with overrides is an experiment (`dvc exp save` records it); the workspace then stays on its baseline,
    so `dvc status` is as clean as before and the next plain run has nothing to redo.
    """
    kept = ["params.yaml", "dvc.lock", *git_outputs]
    snapshot = Path(tempfile.mkdtemp(prefix="flow-restore-", dir=_tmp_dir(workspace)))
    try:
        for rel in kept:
            source = workspace / rel
            if source.is_dir():
                shutil.copytree(source, snapshot / rel, symlinks=True)
            elif source.exists():
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, snapshot / rel)
        yield
    finally:
        for rel in kept:
            target, saved = workspace / rel, snapshot / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if saved.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, target)
        shutil.rmtree(snapshot, ignore_errors=True)
        done = run_dvc(workspace, "checkout", "--force")
        if done.returncode != 0:  # e.g. outputs never committed to the cache: the run itself stands
            log.warning("dvc checkout, putting the outputs back, exited %d: %s", done.returncode,
                        (done.stderr or done.stdout)[-2000:])


def _tmp_dir(workspace: Path) -> Path:
    path = workspace / ".dvc" / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ experiments


def experiment_name(run_name: str) -> str:
    """A flow run name as a valid git ref component (`git check-ref-format`), which `dvc exp save -n` needs."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name)
    name = re.sub(r"\.{2,}", ".", name).strip("-.")  # no '..', no leading '-' (would read as a CLI option)
    if name.endswith(".lock"):
        name = name[: -len(".lock")]
    return name or "prefect-run"


def save_experiment(workspace: Path, name: str, message: str, include: Sequence[str], fallback_suffix: str) -> str:
    """`dvc exp save -n <name>`; returns the name used. `include`: git-kept outputs that may be untracked yet.

    Without `-I`, `exp save` leaves out untracked files, so a first run's metrics would be missing from
    `dvc exp show`. A name already taken (flow run names can repeat) gets `fallback_suffix` appended.
    """
    extra = [arg for path in include if (workspace / path).exists() for arg in ("-I", path)]
    for candidate in (name, f"{name}-{fallback_suffix}"):
        done = run_dvc(workspace, "exp", "save", "-n", candidate, "-m", message, *extra)
        if done.returncode == 0:
            return candidate
        if "conflicts with existing experiment" not in done.stderr + done.stdout:
            break
    raise RuntimeError(f"dvc exp save -n {name} exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")


def list_experiments(workspace: Path) -> list[Experiment]:
    """`dvc exp show --json`: the HEAD baseline and every experiment on it (the workspace row left out).

    Asked in process (a `dvc` process costs more than the question); the CLI's own JSON encoder makes the data
    what `dvc exp show --json` prints.
    """
    from dvc.commands.experiments.show import _format_json
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        shown = [exp.dumpd() for exp in repo.experiments.show()]
    return parse_exp_show(json.loads(json.dumps(shown, default=_format_json)))

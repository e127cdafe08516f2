"""The flow's limits, on a one-stage DVC repo in a temp folder against the test run's Prefect server: a hung stage
times out, only DVC's busy lock is retried, a cancelled run stops the stage it started, a second run waits for the
first (bounded) or is refused naming it, and a run survives its Prefect server going away.

The stage (`hold`) copies input.txt to hold.txt, but first writes a half output, records its pid and waits for a
file `release` (then sleeps the seconds the file holds): the tests decide when it ends, never a clock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.pipeline import REPO, dvc_pipeline
from flows.workspace import project_env, run

pytestmark = pytest.mark.integration

STAGE = '''
import os, pathlib, sys, time
name, out = sys.argv[1], sys.argv[2]
here = pathlib.Path(".")
(here / f"{name}.pid").write_text(str(os.getpid()))
(here / out).write_text("half written\\n")
(here / f"{name}.started").touch()
release = here / "release"
for _ in range(6000):  # at most 10 minutes, so a test that fails cannot leave it behind for long
    if release.exists():
        time.sleep(float(release.read_text() or 0))
        break
    time.sleep(0.1)
(here / out).write_text((here / "input.txt").read_text())
'''

# A flow run in a process of its own (a cancel is a SIGTERM to it, as Prefect's runner sends): no artifacts (the
# tiny repo has no pipeline params), no experiment.
RUN_FLOW = ("import sys; from flows.pipeline import dvc_pipeline; "
            "state = dvc_pipeline(workspace=sys.argv[1], artifacts=False, save_as_experiment=False, "
            "return_state=True); print('STATE', state.type.value, state.message, flush=True); "
            "sys.exit(0 if state.is_completed() else 1)")


def write_flow_params(repo: Path, **flow: Any) -> None:
    """params.yaml of the tiny repo: the project's `base` (always readable) and `flow` sections, `flow` edited."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    section = {**params["flow"], "stage_timeouts": {}, "lock_retries": 0, "workspace_wait_s": 0, **flow}
    (repo / "params.yaml").write_text(yaml.safe_dump({"base": params["base"], "flow": section}, sort_keys=False))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A DVC repo whose stage `hold` ran once (hold.txt = "1"), then made stale (input.txt = "2")."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE)
    (repo / "input.txt").write_text("1\n")
    (repo / "dvc.yaml").write_text("stages:\n  hold:\n    cmd: python stage.py hold hold.txt\n"
                                   "    deps: [stage.py, input.txt]\n    outs: [hold.txt]\n")
    (repo / ".gitignore").write_text("*.pid\n*.started\nrelease\n")
    write_flow_params(repo)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run(cmd, repo)
    (repo / "release").write_text("0")
    run(["dvc", "repro"], repo)
    for name in ("release", "hold.started", "hold.pid"):
        (repo / name).unlink()
    (repo / "input.txt").write_text("2\n")
    return repo


def status(repo: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}")


def alive(pid: int) -> bool:
    """Running, not a zombie (this container's PID 1 may never reap an orphan)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Until `path` exists; fails early if `proc` (the flow) ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the flow ended before {path.name} appeared:\n{proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@contextmanager
def flow_process(repo: Path, env: dict[str, str] | None = None, cmd: list[str] | None = None
                 ) -> Iterator[subprocess.Popen]:
    cmd = cmd or [sys.executable, "-c", RUN_FLOW, str(repo)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pid = repo / "hold.pid"
        if pid.exists() and alive(int(pid.read_text())):
            os.kill(int(pid.read_text()), signal.SIGKILL)  # a failed test must not leave the stage waiting


def task_run(flow_state: Any, name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return next(r for r in runs if r.name == name)


def test_a_hung_stage_times_out_its_processes_killed_and_its_outputs_put_back(repo: Path, prefect_api: str) -> None:
    before = status(repo)
    assert before == {"hold": [{"changed deps": {"input.txt": "modified"}}]}
    # The limit must leave the stage time to start (dvc, then python): on a loaded machine 2 s may not, so the run
    # is repeated with a longer one until the stage had started when it was stopped.
    for limit in (2, 8, 30, 120):
        write_flow_params(repo, stage_timeouts={"hold": limit})
        state = dvc_pipeline(workspace=str(repo), artifacts=False, save_as_experiment=False, return_state=True)
        assert state.is_failed()
        assert "stage 'hold' timed out" in state.message and "flow.stage_timeouts.hold" in state.message, \
            state.message
        assert task_run(state, "hold").run_count == 1  # a timeout is not retried
        assert (repo / "hold.txt").read_text() == "1\n"  # the half-written output replaced by the locked one
        assert status(repo) == before
        if (repo / "hold.pid").exists():
            break
    assert not alive(int((repo / "hold.pid").read_text())), "the stage outlived its timeout"


def test_a_failing_stage_runs_once_and_a_busy_dvc_lock_is_retried(repo: Path, prefect_api: str) -> None:
    # Generous lock retries: they must not apply to a stage that fails on its own.
    write_flow_params(repo, lock_retries=60, lock_retry_delay_s=0.5)
    (repo / "input.txt").write_text("")  # the stage fails: it refuses an empty input
    (repo / "stage.py").write_text("import sys\nif not open('input.txt').read():\n"
                                   "    sys.exit('input.txt is empty: nothing to hold')\n" + STAGE)
    failed = dvc_pipeline(workspace=str(repo), artifacts=False, save_as_experiment=False, return_state=True)
    assert failed.is_failed() and "input.txt is empty" in failed.message, failed.message
    assert task_run(failed, "hold").run_count == 1

    # Someone's `dvc` holds the repository lock until the stage has found it busy: the stage retries, then runs.
    (repo / "input.txt").write_text("3\n")
    (repo / "release").write_text("0")
    hold = "from dvc.repo import Repo; import time; Repo('.').lock.lock(); print('locked', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=repo, stdout=subprocess.PIPE, text=True,
                              env=project_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with logged("DvcLockBusy", holder.kill):
            done = dvc_pipeline(workspace=str(repo), artifacts=False, save_as_experiment=False, return_state=True)
    finally:
        holder.kill()
        holder.wait()
    assert done.is_completed(), done.message
    assert task_run(done, "hold").run_count >= 2
    assert (repo / "hold.txt").read_text() == "3\n" and status(repo) == {}


def test_cancelling_a_run_stops_the_stage_and_leaves_dvc_status_as_it_was(repo: Path, prefect_api: str) -> None:
    before = status(repo)
    with flow_process(repo) as proc:
        wait_for(repo / "hold.started", proc)
        stage = int((repo / "hold.pid").read_text())
        proc.send_signal(signal.SIGTERM)  # what Prefect's runner sends to a run's process to cancel it
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output
    assert not alive(stage), "the stage kept running after its flow run was cancelled"
    assert (repo / "hold.txt").read_text() == "1\n" and status(repo) == before
    with open(repo / ".dvc/tmp/prefect-flow.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


class LogSeen(logging.Handler):
    """Set when a Prefect log record contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()
        self.matched = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.matched = True
            self.seen.set()


@contextmanager
def logged(text: str, then: Callable[[], Any]) -> Iterator[LogSeen]:
    """While the block runs, call `then` (in a thread) once the flow logs `text`: the test acts when the flow got
    there, however slow the machine."""
    seen = LogSeen(text)
    logging.getLogger("prefect").addHandler(seen)
    act = threading.Thread(target=lambda: seen.seen.wait(300) and then(), daemon=True)
    act.start()
    try:
        yield seen
    finally:
        logging.getLogger("prefect").removeHandler(seen)
        seen.seen.set()  # let the thread end
        act.join()


def test_a_second_run_waits_for_the_first_or_is_refused_naming_it(repo: Path, prefect_api: str) -> None:
    with flow_process(repo) as first:
        wait_for(repo / "hold.started", first)
        # No wait allowed: refused at once, naming the run that holds the workspace.
        refused = dvc_pipeline(workspace=str(repo), artifacts=False, save_as_experiment=False, return_state=True)
        assert refused.is_failed()
        assert "is in use by flow run '" in refused.message and f"pid {first.pid}" in refused.message, \
            refused.message
        assert "flow.workspace_wait_s" in refused.message

        # A bounded wait: the second run starts once the first is done.
        write_flow_params(repo, workspace_wait_s=300)
        with logged("waiting up to", lambda: (repo / "release").write_text("0")) as waiting:
            second = dvc_pipeline(workspace=str(repo), artifacts=False, save_as_experiment=False, return_state=True)
        assert waiting.matched
        assert first.wait(timeout=120) == 0, first.communicate()[0]
    assert second.is_completed(), second.message
    assert task_run(second, "hold").state.name == "Cached"  # the first run had reproduced it
    assert status(repo) == {}


# In the temporary server's process only (Prefect marks its environment): a start slower than Prefect's 20 s default.
SLOW_SERVER = "import os, time\nif os.environ.get('PREFECT__SERVER_EPHEMERAL') == '1':\n    time.sleep(21)\n"


@pytest.mark.slow  # waits out a 21 s start; test_offline starts the temporary server in the default run
def test_a_run_without_a_server_waits_for_a_slow_temporary_server(repo: Path, tmp_path: Path) -> None:
    from flows.local_server import EPHEMERAL_TIMEOUT_ENV, OFFLINE_ENV

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_SERVER)
    env = {**project_env(), **OFFLINE_ENV, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}
    for name in ("PREFECT_API_URL", EPHEMERAL_TIMEOUT_ENV):
        env.pop(name, None)  # no server: the flow starts its own, with the project's start-up timeout
    (repo / "release").write_text("0")
    cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(repo), "--no-experiment", "--no-artifacts"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (repo / "hold.txt").read_text() == "2\n" and status(repo) == {}


@pytest.mark.slow  # a server of its own (~15 s to start) and Prefect's client retries
def test_the_prefect_server_going_away_mid_run(repo: Path, tmp_path: Path) -> None:
    from flows.local_server import local_server

    with local_server(tmp_path / "server", ui=False) as server:
        # One retry of a refused connection (Prefect's default is 5, over a minute): the server is not coming back.
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_CLIENT_MAX_RETRIES": "1"}
        cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(repo), "--no-experiment", "--no-artifacts"]
        with flow_process(repo, env, cmd) as proc:
            wait_for(repo / "hold.started", proc)
            os.killpg(server.pid, signal.SIGKILL)  # the server goes away while the stage runs
            (repo / "release").write_text("0")
            output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1
    # The run says what happened, instead of a connection traceback.
    assert "the flow run stopped: the Prefect API" in output and "stopped answering" in output, output[-3000:]
    assert (repo / "hold.txt").read_text() == "2\n" and status(repo) == {}  # the stage finished, as DVC recorded
    with open(repo / ".dvc/tmp/prefect-flow.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released

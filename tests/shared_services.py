"""The long-lived processes one test run shares across its pytest-xdist workers (scripts/test.sh runs two): the
Prefect server and the tiny pipeline run of tests/integration/built.py.

The first worker that needs a service starts it in a session of its own and records it (its process group and
whatever the others need to use it) in the run's shared folder, under a file lock; every other worker finds the
record and uses the same process. The controller, the pytest process that started the workers and outlives them,
ends every recorded process group when the run ends (tests/conftest.py). Without xdist the one process is both.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

WORKER_KEY = "shared_services_dir"   # config.workerinput key: the folder, handed from the controller to the workers
FOLDER = pytest.StashKey[Path]()     # the same folder, in the controller


def folder(config: pytest.Config) -> Path:
    """The run's shared folder: the controller's, in a worker too."""
    if hasattr(config, "workerinput"):
        return Path(config.workerinput[WORKER_KEY])
    return config.stash[FOLDER]


def shared(config: pytest.Config, name: str, start: Callable[[Path], dict]) -> dict:
    """The record of service `name`, started once per run by `start(its folder)` in the first process that asks.

    `start` returns a JSON-able record holding "pid", a process group leader the controller ends with the run. A
    `start` that raises leaves no record: the next test that asks tries again (and fails with its own error).
    """
    root = folder(config)
    record_path = root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if record_path.exists():
            return json.loads(record_path.read_text())
        home = root / name
        home.mkdir(exist_ok=True)
        record = start(home)
        record_path.write_text(json.dumps(record))
        return record


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has ended: a worker that started it may have exited without reaping)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def end_group(pid: int, grace: float = 30.0) -> None:
    """SIGTERM to the process group `pid` leads (a Prefect server shuts down cleanly), SIGKILL after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive(pid):
            return


def end_all(config: pytest.Config) -> None:
    """Ends every service the run recorded (the controller, when the run ends)."""
    for record_path in sorted(folder(config).glob("*.json")):
        end_group(json.loads(record_path.read_text())["pid"])

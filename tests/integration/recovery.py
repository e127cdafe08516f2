"""Helpers of the recovery tests: start a command, SIGKILL its whole process group once a marker appears; run the
tune stage on a disk that is full while a marker file exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flows.workspace import project_env


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 600,
              log: Path | None = None) -> float:
    """Run `cmd` in its own session; SIGKILL the session's process group as soon as `ready()` holds.

    Returns the seconds it ran. Fails if the command ends first (the kill would test nothing).
    """
    out = open(log or os.devnull, "w")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=project_env(), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} ended ({proc.returncode}) before the marker appeared")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{cmd}: no marker after {timeout:.0f} s")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        return time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.close()


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def process_in(project: Path, marker: bytes) -> int | None:
    """The PID of a process working in `project` whose command line starts with or contains `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes() and Path(os.readlink(entry / "cwd")) == project.resolve():
                return int(entry.name)
        except OSError:  # gone, or not ours
            continue
    return None


def trial_worker_in(project: Path) -> int | None:
    """The PID of the Ray worker running a function trial (`ray::ImplicitFunc...`) in `project` (a trial chdirs
    there), if one runs."""
    return process_in(project, b"ray::ImplicitFunc")


def tune_killing_a_worker(project: Path, study: Path, trial_glob: str, worker: Callable[[], int | None],
                          log: Path, timeout: float = 600) -> int | None:
    """Run the tune stage in `project`; once the trial folder matching `trial_glob` under `study` holds its second
    checkpoint (the first is then complete and reported), SIGKILL the process `worker()` finds. Returns its PID
    (None: never found); fails with the log's tail when the stage does not end well."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.tune"], cwd=project, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=project_env())
    killed = None
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        trial = next(iter(study.glob(trial_glob)), None)
        if killed is None and trial is not None and (trial / "checkpoint_000001").is_dir():
            killed = worker()
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    return killed


# Python's audit hook in every process of the stage (PYTHONPATH reaches Ray's workers): writing a trial checkpoint's
# training state fails as on a full disk while the marker file exists. A passing cause, raised in the trial as a real
# one would be; nothing of the stage is replaced.
FULL_DISK = """
import errno
import os
import sys

MARKER = {marker!r}


def _full_disk(event, args):
    if event == "open" and ".state.json.tmp-" in str(args[0]) and os.path.exists(MARKER):
        raise OSError(errno.ENOSPC, "No space left on device (injected while the marker exists)", str(args[0]))


sys.addaudithook(_full_disk)
"""


def tune_on_a_full_disk(project: Path, marker: Path, log: Path, *, meanwhile: Callable[[], None] = lambda: None,
                        cut_off: Callable[[], bool] | None = None, timeout: float = 600) -> int | None:
    """Run the tune stage in `project` with trial checkpoints failing while `marker` exists (`FULL_DISK`), calling
    `meanwhile()` as it runs; returns its exit status, or None when it was SIGKILLed (its whole process group, Ray
    included) as soon as `cut_off()` held. Fails if it ends before it could be cut off, or runs past `timeout`."""
    hook = log.parent / f"{log.stem}-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(FULL_DISK.format(marker=str(marker)))
    env = project_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stages.tune"], cwd=project, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            meanwhile()
            if cut_off is not None and cut_off():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.05)
    finally:
        if proc.poll() is None:  # past the deadline, or the test failed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() < deadline, f"the stage ran past {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    assert cut_off is None, f"the stage ended before it could be cut off:\n{log.read_text()[-3000:]}"
    return proc.returncode

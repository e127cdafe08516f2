"""A stage's `dvc repro` as a process group: its output streamed, a time limit, and a stop that reaches the stage.

`dvc repro` runs the stage's command as its child (through a shell), so terminating `dvc` alone would leave the
stage running, still writing its outputs while the flow puts the workspace back. Each `dvc` process therefore
starts in a session of its own (`start_new_session=True`, its own process group), and stopping it signals the whole
group: SIGTERM, then SIGKILL to whatever is left after a grace period.

While a flow run ends (failure, cancellation, timeout), `stop_all` stops the stages still running in its workspace
and refuses to start new ones, so a task that was queued behind the failing one cannot start `dvc` in a workspace
that is being put back.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRACE_S = 10.0  # between SIGTERM and SIGKILL: DVC and most stages stop within a second of SIGTERM
EOF_GRACE_S = 5.0  # after `dvc` exits, how long a process it left behind may keep the output pipe open


class Stopping(RuntimeError):
    """The flow run is ending: no new stage process may start in its workspace."""


@dataclass(frozen=True)
class Streamed:
    returncode: int
    tail: tuple[str, ...]  # the last lines, for the error message
    timed_out: bool = False  # killed by its time limit
    stopped: bool = False  # killed by `stop_all` (the run is ending)


@dataclass
class _Running:
    proc: subprocess.Popen
    workspace: Path
    name: str
    stopped: bool = False


_lock = threading.Lock()
_running: dict[int, _Running] = {}
_stopping: set[Path] = set()


def _group_members(pgid: int) -> list[int]:
    """Live processes of the group (zombies are done: a container's PID 1 may never reap them)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether anything of the group is left
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                members.append(int(entry.name))
    return members


def kill_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL to what is left after `grace` s; returns when it is gone."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap `dvc` itself, our child
        if not _group_members(proc.pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    while _group_members(proc.pid) and time.monotonic() < deadline + grace:
        time.sleep(0.1)


def allow(workspace: Path) -> None:
    """A flow run starts in `workspace`: stage processes may start there again."""
    with _lock:
        _stopping.discard(workspace.resolve())


def stop_all(workspace: Path) -> list[str]:
    """Stop every stage process running in `workspace` and start no more; returns the names of those stopped."""
    workspace = workspace.resolve()
    with _lock:
        _stopping.add(workspace)
        running = [r for r in _running.values() if r.workspace == workspace]
        for entry in running:
            entry.stopped = True
    for entry in running:
        kill_group(entry.proc)
    return [entry.name for entry in running]


def _read_lines(pipe: Any, lines: queue.Queue) -> None:
    for raw in iter(pipe.readline, b""):
        lines.put(raw)
    lines.put(None)


def stream(cmd: Sequence[str], cwd: Path, on_line: Callable[[str], Any], tail_lines: int = 25, *,
           env: dict[str, str] | None = None, timeout: float | None = None, name: str = "") -> Streamed:
    """Run `cmd` in a process group of its own, handing each output line (stdout and stderr, interleaved as
    written) to `on_line`; past `timeout` seconds the group is killed. `name`: what `stop_all` reports."""
    workspace = cwd.resolve()
    tail: deque[str] = deque(maxlen=tail_lines)
    with _lock:
        if workspace in _stopping:
            raise Stopping(f"the flow run is ending: {name or ' '.join(cmd)} not started")
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        entry = _running[proc.pid] = _Running(proc, workspace, name or " ".join(cmd))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out, exited_at = False, None
    try:
        while True:
            try:
                raw = lines.get(timeout=0.2)
            except queue.Empty:
                now = time.monotonic()
                if deadline is not None and now >= deadline and not timed_out:
                    timed_out = True
                    kill_group(proc)
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    # A process it left behind (or one that survived the kill) may hold the pipe open for ever.
                    if entry.stopped or timed_out or now - exited_at > EOF_GRACE_S:
                        break
                continue
            if raw is None:
                break
            # Progress bars redraw one line with '\r' hundreds of times: log only what it finally says.
            segments = [s for s in raw.decode("utf-8", errors="replace").rstrip("\n").split("\r") if s.strip()]
            if segments:
                line = segments[-1].rstrip()
                tail.append(line)
                on_line(line)
        return Streamed(proc.wait(), tuple(tail), timed_out=timed_out, stopped=entry.stopped)
    finally:
        if proc.poll() is None or _group_members(proc.pid):  # an error here (or in on_line): leave nothing running
            kill_group(proc)
        with _lock:
            _running.pop(proc.pid, None)

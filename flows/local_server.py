"""A local Prefect server on 127.0.0.1, started and stopped by the caller (tests, benchmark, quick demos).

`prefect server start` is the real server the UI talks to; this module only wraps its lifecycle: a private
PREFECT_HOME (its SQLite database lives there), analytics off, bound to loopback, healthy before use, and stopped
with SIGTERM. Users who want a long-lived server run the same command by hand (see docs/prefect.md).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from multimodal.pipeline.offline import TELEMETRY_OFF

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Nothing may call out of the machine; the server also reads these from the environment of its own process.
OFFLINE_ENV = TELEMETRY_OFF


@dataclass(frozen=True)
class LocalServer:
    """A running server: `api_url` goes into PREFECT_API_URL; `log_path` holds its output."""

    api_url: str
    home: Path
    log_path: Path
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server process: private PREFECT_HOME and offline switches on top of ours."""
    env = dict(os.environ)
    # An inherited PREFECT_API_URL would make the server's own services talk to some other server.
    env.pop("PREFECT_API_URL", None)
    env.update(OFFLINE_ENV)
    env["PREFECT_HOME"] = str(home)
    env.update(extra or {})
    return env


def _healthy(api_url: str) -> bool:
    # Polls our own server: api_url is always built from HOST (127.0.0.1), never a remote address.
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (the server shuts its services down cleanly), then SIGKILL the group we created if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("prefect server %d ignored SIGTERM for %.0f s; killing its process group", proc.pid, timeout)
        os.killpg(proc.pid, signal.SIGKILL)  # the group is the one start_new_session gave this server
        proc.wait(timeout=10)


EPHEMERAL_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@contextmanager
def temporary_server_timeout(seconds: int) -> Iterator[None]:
    """For the block, Prefect's temporary server (started by a flow run when no PREFECT_API_URL is set) may take
    `seconds` to come up (params `flow.server_startup_timeout_s`) instead of Prefect's 20 s, too short on a loaded
    machine. PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS set in the environment wins: it is Prefect's own knob.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if EPHEMERAL_TIMEOUT_ENV in os.environ:
        yield
        return
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: seconds}):
        yield


def start_server(
    home: Path,
    port: int | None = None,
    *,
    ui: bool = True,
    extra_env: dict[str, str] | None = None,
    startup_timeout: float = 120.0,
) -> tuple[subprocess.Popen, LocalServer]:
    """Start `prefect server start` on 127.0.0.1 in its own session; returns once `/api/health` answers.

    The caller stops it (`local_server` does, at the end of its block); a server that never gets healthy is stopped
    here before the error is raised.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://{HOST}:{port}/api"
    log_path = home / "server.log"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port),
           "--analytics-off", "--ui" if ui else "--no-ui"]
    # The UI asks /ui-settings where the API is; unset, that is port 4200 whatever port the server got.
    env = server_env(home, {"PREFECT_UI_API_URL": api_url, **(extra_env or {})})
    with open(log_path, "ab") as out:
        # Own session: the server's uvicorn child goes with it, and a hung server can be killed as a group.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(api_url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {startup_timeout:.0f} s; see {log_path}")
            time.sleep(0.5)
    except BaseException:
        _stop(proc, timeout=30)
        raise
    log.info("prefect server %s healthy (pid %d, home %s)", api_url, proc.pid, home)
    return proc, LocalServer(api_url=api_url, home=home, log_path=log_path, pid=proc.pid)


@contextmanager
def local_server(
    home: Path,
    port: int | None = None,
    *,
    ui: bool = True,
    extra_env: dict[str, str] | None = None,
    startup_timeout: float = 120.0,
) -> Iterator[LocalServer]:
    """Run `prefect server start` on 127.0.0.1 until the block ends; yields once `/api/health` answers."""
    proc, server = start_server(home, port, ui=ui, extra_env=extra_env, startup_timeout=startup_timeout)
    try:
        yield server
    finally:
        _stop(proc, timeout=30)

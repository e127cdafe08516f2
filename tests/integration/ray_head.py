"""A real Ray cluster for a test: `ray start --head --block` in its own session, temp dir and free port, ended by
signal (never `ray stop`, which ends every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.workspace import project_env
from multimodal.pipeline.ray_cluster import ray_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ray_head(project: Path, num_cpus: int = 2) -> Iterator[tuple[str, list[str]]]:
    """A head node for `project` while the block runs: yields its address and node ids once it answers."""
    address = f"127.0.0.1:{free_port()}"
    # Its own temp dir: `ray start` records its address there, not in /tmp/ray where later `ray.init()` calls
    # (other tests, other users) would find it. Short: Ray's unix socket paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # `--block` keeps the head in one process group this test owns and ends; `ray stop` would end every Ray
    # on the machine. Same HOME as the stage: no metadata probe, and the auth token Ray writes there is shared.
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={address.split(':')[1]}", f"--num-cpus={num_cpus}", "--object-store-memory=200000000",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        cwd=project, env={**project_env(), **ray_env(project)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield address, connected_node_ids(project, address)
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def connected_node_ids(project: Path, address: str, timeout: float = 90) -> list[str]:
    """Node ids of the cluster at `address`, once it answers."""
    code = "import ray; ray.init(logging_level='ERROR'); print(' '.join(n['NodeID'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout
    while True:
        env = {**project_env(), **ray_env(project, joining=True), "RAY_ADDRESS": address}
        done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout.split()
        time.sleep(2)


def stop_head(head: subprocess.Popen) -> None:
    """End the head this test started: SIGTERM (Ray's graceful stop), SIGKILL to its group if it lingers."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)

"""One flow run per workspace: a lock file that a second run waits on (bounded), then is refused naming the first."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class WorkspaceBusy(RuntimeError):
    """Another flow run holds this workspace, for longer than this run would wait."""


def _holder(handle: Any) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "another flow run (it has not said which yet)"


@contextmanager
def workspace_lock(workspace: Path, wait_s: float = 0.0, holder: str = "",
                   on_wait: Callable[[str], Any] = log.info) -> Iterator[None]:
    """One flow run per workspace, whatever started it (deployment, CLI, test): a second run waits up to `wait_s`
    seconds for the first to finish, then is refused with a message naming it.

    DVC's own lock lasts one command; between commands a second flow would rewrite params.yaml under the first.
    flock is released by the kernel if the process dies, so a crash never leaves the workspace locked. The holder
    writes who it is (`holder`: the flow run's name and id, its pid) into the lock file, for the run that waits.
    """
    path = workspace / ".dvc" / "tmp" / "prefect-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"{workspace} is in use by {_holder(handle)}; waited {wait_s:.0f} s (flow.workspace_wait_s "
                        f"in params.yaml). Run again when it has finished, or cancel it; lock: {path}") from None
                if not waiting:
                    on_wait(f"waiting up to {wait_s:.0f} s for {_holder(handle)} to finish with {workspace}")
                    waiting = True
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{holder or 'a flow run'} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})")
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)

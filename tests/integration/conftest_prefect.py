"""One real Prefect server on 127.0.0.1 for the whole test run, shared by its pytest-xdist workers.

tests/integration/conftest.py imports its `prefect_api` fixture: the shared tiny run (`built`) is a flow run on
it, and test_flow's runs report to it too. The server gets its own PREFECT_HOME (its SQLite database) in a
temporary folder, analytics off, and serves its UI at the API URL less `/api` (for the headless-browser test); the
tests' Prefect client points at it through PREFECT_API_URL, and subprocesses (the shared run, `python -m
flows.serve`) inherit that from the environment. The first worker that needs it starts it; it stops with SIGTERM
when the run ends (tests/shared_services.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.local_server import OFFLINE_ENV, free_port, start_server
from tests.shared_services import shared


def _start(home: Path) -> dict:
    proc, server = start_server(home, free_port(), ui=True)
    return {"pid": proc.pid, "api_url": server.api_url}


@pytest.fixture(scope="session")
def prefect_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    api_url = shared(request.config, "prefect", _start)["api_url"]
    with pytest.MonkeyPatch.context() as env:
        client_home = tmp_path_factory.mktemp("prefect-client")
        # Environment for subprocesses; temporary_settings for this process, whose settings were read at import.
        env.setenv("PREFECT_API_URL", api_url)
        env.setenv("PREFECT_HOME", str(client_home))
        for key, value in OFFLINE_ENV.items():
            env.setenv(key, value)
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: client_home}):
            try:
                yield api_url
            finally:
                # Logs and events are sent in batches: deliver them while the server is still there.
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)

"""One real Prefect server on 127.0.0.1 for the whole test session.

tests/integration/conftest.py imports its `prefect_api` fixture: the shared tiny run (`built`) is a flow run on
it, and test_flow's runs report to it too. The server gets its own PREFECT_HOME (its SQLite database) in a
temporary folder, analytics off, and serves its UI at the API URL less `/api` (for the headless-browser test); the
tests' Prefect client points at it through PREFECT_API_URL, and subprocesses (the shared run, `python -m
flows.serve`) inherit that from the environment. The server stops with SIGTERM at session end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flows.local_server import OFFLINE_ENV, free_port, local_server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect")
    with (local_server(home / "server", free_port(), ui=True) as server,
          pytest.MonkeyPatch.context() as env):
        client_home = home / "client"
        # Environment for subprocesses; temporary_settings for this process, whose settings were read at import.
        env.setenv("PREFECT_API_URL", server.api_url)
        env.setenv("PREFECT_HOME", str(client_home))
        for key, value in OFFLINE_ENV.items():
            env.setenv(key, value)
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_HOME: client_home}):
            try:
                yield server.api_url
            finally:
                # Logs and events are sent in batches: deliver them while the server is still there.
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)

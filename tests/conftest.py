"""The run-wide folder for the processes the test run's workers share (tests/shared_services.py), made by the
controller and handed to each pytest-xdist worker; the processes recorded there end with the run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests import shared_services


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.stash[shared_services.FOLDER] = Path(tempfile.mkdtemp(prefix="pytest-shared-"))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent when xdist is not loaded (-p no:xdist)
def pytest_configure_node(node) -> None:  # noqa: ANN001  (xdist's WorkerController)
    node.workerinput[shared_services.WORKER_KEY] = str(node.config.stash[shared_services.FOLDER])


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and shared_services.FOLDER in config.stash:
        shared_services.end_all(config)
        shutil.rmtree(config.stash[shared_services.FOLDER], ignore_errors=True)

"""Serve the DVC pipeline flow as a scheduled Prefect deployment (one run at a time per workspace).

    python -m flows.serve                                  # nightly at 03:00 UTC, this repo as the workspace
    python -m flows.serve --cron "*/30 * * * *" --timezone Europe/Berlin --name every-30-min
    prefect deployment run 'dvc-pipeline/nightly' --param overrides='{"tune.num_samples": 3}'

The process registers the deployment with the server in PREFECT_API_URL, then executes its runs (scheduled or
triggered from the UI/CLI) in subprocesses until SIGTERM/Ctrl-C, which also pauses the schedule. One run at a
time: the deployment's concurrency limit is 1 with ENQUEUE (a run that comes due while another is going waits
for the slot instead of failing), the runner executes at most one run, and the flow itself takes a workspace lock,
which also covers runs started outside this deployment.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import REPO, dvc_pipeline

log = logging.getLogger(__name__)

DEFAULT_CRON = "0 3 * * *"
DEFAULT_NAME = "nightly"


def build_deployment(
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    workspace: Path = REPO,
    overrides: dict[str, Any] | list[str] | None = None,
) -> RunnerDeployment:
    """The deployment `serve` runs; also usable with `.apply()` to register it without executing runs."""
    parameters: dict[str, Any] = {"workspace": str(Path(workspace).resolve())}
    if overrides:
        parameters["overrides"] = overrides
    return dvc_pipeline.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=f"`dvc repro` of {parameters['workspace']} as a Prefect flow; each run saved as a DVC experiment",
        tags=["dvc"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the DVC pipeline as a scheduled Prefect deployment.")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: {DEFAULT_CRON!r})")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron schedule (default: UTC)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})")
    parser.add_argument("--workspace", type=Path, default=REPO, help="the DVC repo the runs reproduce")
    parser.add_argument("--overrides", type=json.loads, default=None,
                        help='default param overrides of scheduled runs, JSON: \'{"tune.num_samples": 3}\'')
    args = parser.parse_args(argv)
    deployment = build_deployment(args.name, args.cron, args.timezone, args.workspace, args.overrides)
    # limit=1: this runner never executes two runs at once, even if runs are triggered by hand.
    serve(deployment, limit=1)


if __name__ == "__main__":
    main()

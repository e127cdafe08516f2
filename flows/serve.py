"""Serve the DVC pipeline flow as a scheduled Prefect deployment (one run at a time per workspace).

    python -m flows.serve                                  # nightly at 03:00 UTC, of this repo
    python -m flows.serve --cron "*/30 * * * *" --timezone Europe/Berlin --name every-30-min
    prefect deployment run 'dvc-pipeline/nightly' --param overrides='{"tune.num_samples": 3}'

The process registers the deployment with the server in PREFECT_API_URL, then executes its runs (scheduled or
triggered from the UI/CLI) in subprocesses until SIGTERM/Ctrl-C, which also pauses the schedule. One run at a
time: the deployment's concurrency limit is 1 with ENQUEUE (a run that comes due while another is going waits
for the slot instead of failing), the runner executes at most one run, and the flow itself takes a workspace lock,
which also covers runs started outside this deployment.

The deployment reproduces this project only: it has no `workspace` parameter, since anyone who can reach the
server could otherwise point it at another folder's `dvc.yaml`, i.e. run that folder's commands.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from prefect import flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import FLOW_NAME, REPO, dvc_pipeline

log = logging.getLogger(__name__)

DEFAULT_CRON = "0 3 * * *"
DEFAULT_NAME = "nightly"


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1))
def project_pipeline(
    overrides: dict[str, Any] | list[str] | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    save_as_experiment: bool = True,
    artifacts: bool = True,
    recent_experiments: int = 10,
) -> dict[str, Any]:
    """`dvc_pipeline` of this project (the folder this code is in), the only one a deployment may run."""
    return dvc_pipeline.fn(workspace=str(REPO), overrides=overrides, retries=retries,
                           retry_delay_seconds=retry_delay_seconds, save_as_experiment=save_as_experiment,
                           artifacts=artifacts, recent_experiments=recent_experiments)


def build_deployment(
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    overrides: dict[str, Any] | list[str] | None = None,
) -> RunnerDeployment:
    """The deployment `serve` runs; also usable with `.apply()` to register it without executing runs."""
    return project_pipeline.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"overrides": overrides} if overrides else {},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=f"`dvc repro` of {REPO} as a Prefect flow; a run that reproduces a stage is saved as a DVC "
                    "experiment",
        tags=["dvc"],
        enforce_parameter_schema=True,  # a parameter the flow does not have (`workspace`) is refused
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the DVC pipeline as a scheduled Prefect deployment.")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: {DEFAULT_CRON!r})")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron schedule (default: UTC)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})")
    parser.add_argument("--overrides", type=json.loads, default=None,
                        help='default param overrides of scheduled runs, JSON: \'{"tune.num_samples": 3}\'')
    args = parser.parse_args(argv)
    deployment = build_deployment(args.name, args.cron, args.timezone, args.overrides)
    # limit=1: this runner never executes two runs at once, even if runs are triggered by hand.
    serve(deployment, limit=1)


if __name__ == "__main__":
    main()

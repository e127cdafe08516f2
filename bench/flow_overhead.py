"""Overhead of the Prefect flow over plain `dvc repro`, for a full run and a no-op run; prints a markdown table.

    python bench/flow_overhead.py [--repeats 3] 2>/dev/null     # flow logs go to stderr, the table to stdout

Two identical scratch copies of this project with the integration tests' tiny params (`TINY_PARAMS`): copy A is
reproduced with `dvc repro`, copy B with the flow, against a local Prefect server on 127.0.0.1 (own PREFECT_HOME,
started before any timing). Full run: each copy once from scratch. No-op run: each copy again, `repeats` times
alternating A/B (so load from other jobs on the machine hits both), median reported. The flow is timed as users
run it (stage tasks + `dvc exp save` + artifacts) and bare (stage tasks only). Takes ~6-8 minutes on 2 cores.

The target ("fast by default"): a cached flow run as users run it takes at most TARGET_RATIO times a no-op
`dvc repro` (medians of the same run); the last line says whether it holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `flows`, `multimodal`, `tests` importable

from flows.local_server import OFFLINE_ENV, local_server  # noqa: E402
from flows.workspace import copy_project, project_env  # noqa: E402
from tests.integration.conftest import TINY_PARAMS  # noqa: E402

TARGET_RATIO = 2.0


def timed_repro(project: Path) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=project_env(),
                          capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed in {project}:\n{done.stderr[-3000:]}")
    return elapsed


def timed_flow(project: Path, full: bool = True) -> float:
    from flows.pipeline import dvc_pipeline

    started = time.monotonic()
    state = dvc_pipeline(workspace=str(project), save_as_experiment=full, artifacts=full, return_state=True)
    elapsed = time.monotonic() - started
    if not state.is_completed():
        raise SystemExit(f"flow failed in {project}: {state.message}")
    return elapsed


def row(label: str, plain: float, flow: float) -> str:
    return f"| {label} | {plain:.1f} | {flow:.1f} | {flow - plain:+.1f} | {flow / plain:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs per variant (median reported)")
    args = parser.parse_args()
    os.environ.update(OFFLINE_ENV)

    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        root = Path(tmp)
        plain_project = copy_project(root / "plain" / "project", TINY_PARAMS)
        flow_project = copy_project(root / "flow" / "project", TINY_PARAMS)
        with local_server(root / "prefect-server", ui=False) as server, temporary_settings(
            {PREFECT_API_URL: server.api_url, PREFECT_HOME: root / "prefect-client"}
        ):
            full_plain = timed_repro(plain_project)
            full_flow = timed_flow(flow_project)
            noop_plain, noop_flow, noop_bare = [], [], []
            for _ in range(args.repeats):
                noop_plain.append(timed_repro(plain_project))
                noop_flow.append(timed_flow(flow_project))
                noop_bare.append(timed_flow(flow_project, full=False))
            APILogWorker.drain_all(timeout=10)

    med = statistics.median
    print(f"\nFlow overhead over `dvc repro` (tiny params, {os.cpu_count()} CPUs, seconds; no-op: median of "
          f"{args.repeats})\n")
    print("| run | `dvc repro` | flow | overhead | ratio |")
    print("|---|---|---|---|---|")
    print(row("full (every stage runs; flow incl. exp save + artifacts)", full_plain, full_flow))
    print(row("no-op (all cached; flow incl. exp save + artifacts)", med(noop_plain), med(noop_flow)))
    print(row("no-op, flow stage tasks only (no exp save, no artifacts)", med(noop_plain), med(noop_bare)))
    print(f"\nno-op samples: dvc {[round(x, 1) for x in noop_plain]}, flow {[round(x, 1) for x in noop_flow]}, "
          f"bare flow {[round(x, 1) for x in noop_bare]}")
    ratio = med(noop_flow) / med(noop_plain)
    print(f"\ncached flow / no-op `dvc repro`: {ratio:.2f}x (target <= {TARGET_RATIO:g}x: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")


if __name__ == "__main__":
    main()

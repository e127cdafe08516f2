#!/usr/bin/env bash
# The test suite: set up the environment, then pytest (slow and gpu tests are opt-in: -m slow / -m gpu).
# Two pytest-xdist workers, a test module each at a time (its module fixtures run once): most integration tests
# wait on subprocesses (dvc, Ray, Prefect), so two keep two cores busier than one. TEST_WORKERS=0 runs in this
# process (as does `-n 0` after the command); the workers share one Prefect server and one tiny pipeline run
# (tests/shared_services.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest -n "${TEST_WORKERS:-2}" --dist loadscope "$@"

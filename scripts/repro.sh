#!/usr/bin/env bash
# The main job: set up the environment, then `dvc repro` on the embedded default dataset (offline).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dvc repro "$@"
dvc metrics show   # tune.json (validation) and headline.json (test); details: metrics/evaluate.json; runs: python -m stages.compare

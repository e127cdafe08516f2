#!/usr/bin/env bash
# The test suite: set up the environment, then pytest (slow and gpu tests are opt-in: -m slow / -m gpu).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest "$@"

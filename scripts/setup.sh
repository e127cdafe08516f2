#!/usr/bin/env bash
# Creates .venv with the tested pins (once per requirements.lock content) and puts it first on PATH.
# Sourced by scripts/repro.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (about 2-3 minutes the first time)..."
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: pip then takes the local CPU build here (a CUDA build on GPU machines).
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip check
  rm -f .venv/.installed-* && touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Nothing calls out of the machine: telemetry off everywhere, Hugging Face hub offline, whatever the shell had.
# Only a stage whose params name a `hub:` id switches the hub on, for itself (multimodal.pipeline.runtime.go_offline).
eval "$(python -m multimodal.pipeline.offline)"   # the one table of switches: multimodal/pipeline/offline.py

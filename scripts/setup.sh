#!/usr/bin/env bash
# Creates .venv with the tested pins (once per requirements.lock content) and puts it first on PATH.
# Sourced by scripts/repro.sh and scripts/test.sh. Once set up, it starts no Python: a few milliseconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The stamp: what decides the environment (the pins and how they are installed), not pyproject.toml's tool settings.
stamp=".venv/.installed-$(cat requirements.lock scripts/make_venv.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  bash scripts/make_venv.sh   # uv, or pip where uv cannot be had (SETUP_INSTALLER=pip forces pip)
  rm -f .venv/.installed-* && touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Nothing calls out of the machine: telemetry off everywhere, Hugging Face hub offline, whatever the shell had.
# Only a stage whose params name a `hub:` id switches the hub on, for itself (multimodal.pipeline.runtime.go_offline).
# The one table of switches: multimodal/pipeline/offline.py. Its `export` lines are kept in .venv until it changes.
offline_env="${stamp/installed/offline-env}-$(sha256sum < multimodal/pipeline/offline.py | cut -c1-16)"
if [ ! -f "$offline_env" ]; then
  python -m multimodal.pipeline.offline > ".venv/.tmp-offline-env.$$"
  find .venv -maxdepth 1 -name '.offline-env-*' -delete
  mv ".venv/.tmp-offline-env.$$" "$offline_env"
fi
source "$offline_env"

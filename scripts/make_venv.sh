#!/usr/bin/env bash
# Installs the tested pins into .venv: torch 2.13.0 and requirements.lock, then checks them (`pip check`).
# Run by scripts/setup.sh when its stamp is missing (first set-up, or requirements.lock / this script changed).
#
# With uv (35-60 s on a fresh two-core machine): the `uv` on PATH, else uv $UV_VERSION installed by pip into
# .venv/.uv (a few seconds). uv does not read pip's configuration: scripts/uv_pip.py passes it on, so uv takes the
# same torch build and versions pip would (here the local CPU torch). Where uv cannot be had or fails: pip, as
# before (3-6 minutes). SETUP_INSTALLER=pip forces pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9

with_pip() {
  echo "setting up .venv with pip (3-6 minutes the first time)..."
  "$PYTHON" -m venv .venv
  rm -f .venv/lib/python*/site-packages/_setup_write_bytecode.pth   # pip compiles bytecode itself (below)
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: pip then takes the local CPU build here (a CUDA build on GPU machines).
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip check
}

find_uv() {
  if command -v uv >/dev/null 2>&1; then
    command -v uv
  elif [ -x .venv/.uv/bin/uv ] || "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-compile \
      --only-binary=:all: --target .venv/.uv "uv==$UV_VERSION" >/dev/null 2>&1; then
    echo "$PWD/.venv/.uv/bin/uv"
  else
    return 1
  fi
}

with_uv() {   # every step chained: `set -e` does not apply inside a function called as a condition
  echo "setting up .venv with uv (under a minute the first time)..."
  local site
  "$PYTHON" -m venv --without-pip .venv &&
    # One resolution for everything: pip (the venv keeps it, as a pip-made one does), torch pinned, the lock.
    "$PYTHON" scripts/uv_pip.py "$1" install -q --python .venv/bin/python pip torch==2.13.0 -r requirements.lock &&
    "$1" pip check --python .venv/bin/python &&
    # pip compiles every module to bytecode at install (most of its CPU time); uv does not, and Python writes it at
    # first import instead, except where PYTHONDONTWRITEBYTECODE is set (as in some containers): there every
    # process would compile torch & co. again. Inside this venv, let Python write it.
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') &&
    printf '%s\n' "# scripts/make_venv.sh: uv installs no bytecode (pip compiles it): write it at first import" \
      "import sys; sys.dont_write_bytecode = False" > "$site/_setup_write_bytecode.pth"
}

native_libraries() {   # after either installer: soundfile must find libsndfile (audio decoding needs it)
  .venv/bin/python -c "import soundfile" 2>/dev/null && return 0
  # uv takes a version's files from the first index listing it; where that index has only soundfile's pure-Python
  # wheel, libsndfile must come from the system. pip picks the best wheel across all indexes: the platform wheel,
  # which bundles the library.
  echo "soundfile found no libsndfile: reinstalling it with pip (its platform wheel bundles the library)"
  .venv/bin/python -m pip install -q --no-deps --force-reinstall --only-binary=:all: \
    "$(grep -i '^soundfile==' requirements.lock)" || true
  .venv/bin/python -c "import soundfile" 2>/dev/null ||
    echo "WARNING: soundfile cannot load libsndfile; install it (Debian: apt-get install libsndfile1)" >&2
}

case "${SETUP_INSTALLER:-uv}" in
  pip) with_pip ;;
  uv)
    if ! uv=$(find_uv); then
      echo "uv could not be installed (pip install uv==$UV_VERSION failed): falling back to pip"
      with_pip
    elif ! with_uv "$uv"; then
      echo "the set-up with uv ($uv) failed: falling back to pip"
      with_pip
    fi ;;
  *) echo "SETUP_INSTALLER must be uv or pip, not '$SETUP_INSTALLER'" >&2; exit 2 ;;
esac
native_libraries

"""Runs `uv pip ARGS...` with this machine's pip configuration passed on, so that uv installs what pip would.

    python3 scripts/uv_pip.py UV install -r requirements.lock ...     (run by scripts/make_venv.sh)

uv does not read pip's configuration files nor its PIP_* variables. Here they carry the local wheels (the CPU torch
comes from `find-links`), extra indexes, a constraints file, the certificate bundle and a timeout; without them uv
would take the CUDA torch from the registry. The effective values come from `python3 -m pip config list` (files
and PIP_* variables; a variable overrides the `install` section, which overrides `global`), mapped to uv's
options (an SSL_CERT_FILE or UV_HTTP_TIMEOUT already set wins). pip takes the best match across all its indexes,
hence `--index-strategy unsafe-best-match`. A pip setting that could change what is installed and has no mapping
here is named on stderr; uv runs without it.
Standard library only: it runs with the system Python before .venv exists.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip settings that change nothing uv installs here (output, caching, pip's own checks).
IGNORED = {"break-system-packages", "cache-dir", "config-file", "disable-pip-version-check", "no-cache-dir",
           "no-color", "no-input", "no-python-version-warning", "no-warn-conflicts", "no-warn-script-location",
           "progress-bar", "quiet", "require-virtualenv", "retries", "root-user-action", "verbose"}


def pip_config(python: str = sys.executable) -> dict[str, str]:
    """The effective `install` settings of this machine's pip (empty when pip is missing)."""
    try:
        listing = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                 check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return effective_settings(listing)


def effective_settings(listing: str) -> dict[str, str]:
    """`pip config list` output (`section.key='value'` lines) -> key: value as `pip install` sees it."""
    rank = {"global": 0, "install": 1, ":env:": 2}   # pip's own order: a later one wins
    found: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in rank:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        key = key.replace("_", "-")
        if key not in found or rank[section] >= found[key][0]:
            found[key] = (rank[section], str(value))
    return {key: value for key, (_, value) in found.items()}


def uv_options(config: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """pip settings -> (uv command-line options, environment variables, pip settings left unmapped)."""
    args = ["--index-strategy", "unsafe-best-match"]
    env: dict[str, str] = {}
    unmapped = []
    flag_per_item = {"find-links": "--find-links", "extra-index-url": "--extra-index-url",
                     "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
    for key, value in sorted(config.items()):
        if key in flag_per_item:
            for item in value.split():
                args += [flag_per_item[key], item]
        elif key == "index-url":
            args += ["--index-url", value]
        elif key == "no-index":
            args += ["--no-index"] if value.lower() in {"1", "true", "yes", "on"} else []
        elif key == "cert":
            env["SSL_CERT_FILE"] = value
        elif key in {"timeout", "default-timeout"}:
            env["UV_HTTP_TIMEOUT"] = str(int(float(value)))
        elif key not in IGNORED:
            unmapped.append(key)
    return args, env, unmapped


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    uv, *pip_args = sys.argv[1:]
    args, env, unmapped = uv_options(pip_config())
    if unmapped:
        print(f"uv_pip: pip setting(s) not passed on to uv: {', '.join(unmapped)}", file=sys.stderr)
    os.execvpe(uv, [uv, "pip", *pip_args, *args], {**env, **os.environ})   # variables already set win


if __name__ == "__main__":
    main()

"""Scratch copies of this project (tests, benchmarks): tracked files, tweaked params, fresh git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from multimodal.pipeline.offline import offline_env

REPO = Path(__file__).resolve().parents[1]


def project_env() -> dict[str, str]:
    """The environment a stage sees: this interpreter's `python` first on PATH, telemetry off, hub offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(offline_env())
    env.update(GIT_AUTHOR_NAME="pipeline", GIT_COMMITTER_NAME="pipeline",
               GIT_AUTHOR_EMAIL="pipeline@localhost", GIT_COMMITTER_EMAIL="pipeline@localhost")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def set_params(project: Path, overrides: dict[tuple[str, ...], object]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for keys, value in overrides.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(dest: Path, overrides: dict[tuple[str, ...], object] | None = None) -> Path:
    """Copy the repo's tracked (and untracked, not ignored) files to `dest`, apply params, commit in a new repo."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    for name in listing.splitlines():
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    if overrides:
        set_params(dest, overrides)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "scratch copy"], dest)
    return dest

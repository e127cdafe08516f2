"""The one tiny `dvc repro` a test run shares (conftest's `built` fixture), instrumented while it runs.

Most integration modules need a reproduced tiny project; building it once per test run instead of once per module
is most of the suite's time. The run is watched twice, so that the modules that used to run a pipeline of their
own only to watch it can read this one instead:
- an import hook (a `sitecustomize` on PYTHONPATH) writes, when a `python -m stages.<name>` process exits, the
  project modules it had loaded (test_stage_imports checks them against dvc.yaml's deps);
- strace, where installed, records every socket call of `dvc repro` and all its descendants (test_offline).
Both leave the run's outputs untouched. Tests never write into the built project: they take a `copy_built`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flows.workspace import copy_project, project_env
from multimodal.pipeline.stage_deps import PACKAGES

# Runs in every Python process of the pipeline (PYTHONPATH); only a `python -m stages.<name>` process writes its
# modules, at exit, to $STAGE_IMPORTS_DIR/<module>[@<args>].<pid>.json.
HOOK = '''
import atexit
import json
import os
import sys

PACKAGES = {packages!r}


def _dump():
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(spec, "name", None) or ""
    if not module.startswith("stages."):
        return
    loaded = {{}}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path and (name == "__main__" or name.split(".")[0] in PACKAGES):
            loaded[name] = os.path.realpath(path)
    tag = "@".join([module, *sys.argv[1:]])
    with open(os.path.join(os.environ["STAGE_IMPORTS_DIR"], f"{{tag}}.{{os.getpid()}}.json"), "w") as handle:
        json.dump({{"module": module, "argv": sys.argv[1:], "loaded": loaded}}, handle)


atexit.register(_dump)
'''

SOCKET_CALLS = "trace=connect,sendto,sendmsg,sendmmsg"


def traced(cmd: list[str], log: Path) -> list[str]:
    """`cmd` under strace, every socket call of it and its descendants written to `log`."""
    # --seccomp-bpf: only the traced calls stop the process, so the run is barely slower.
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", SOCKET_CALLS, "-e", "signal=none", "-o", str(log), *cmd]


@dataclass(frozen=True)
class Built:
    """A tiny project after one `dvc repro` of every stage (nothing committed after it), and what watched it."""

    project: Path
    stdout: str                 # the run's output: which stages ran
    seconds: float
    imports: Path               # the import hook's dumps, one JSON per stage process
    trace: Path | None          # strace's log of the whole run; None where strace is not installed

    def stages_run(self) -> set[str]:
        return set(re.findall(r"Running stage '([^']+)'", self.stdout))


def build(base: Path, params: dict) -> Built:
    """Copies this repo to `base/project` with `params`, then runs `dvc repro` under the hook (and strace)."""
    project = copy_project(base / "project", params)
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(HOOK.format(packages=PACKAGES))
    imports = base / "imports"
    imports.mkdir()
    env = project_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "hook"), env.get("PYTHONPATH")) if p)
    env["STAGE_IMPORTS_DIR"] = str(imports)
    trace = base / "dvc-repro.trace" if shutil.which("strace") else None
    # --no-run-cache: every stage command runs (none is restored from a run recorded before).
    cmd = ["dvc", "repro", "--no-run-cache"]
    start = time.monotonic()
    done = subprocess.run(traced(cmd, trace) if trace else cmd, cwd=project, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"the shared tiny `dvc repro` failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return Built(project, done.stdout, seconds, imports, trace)


def copy_built(built: Built, dest: Path) -> Path:
    """A private copy of the built project (git history, DVC cache and state included) at `dest`.

    Ray's study folder stays behind: it holds the built run's absolute paths, and a `tune` in the copy must start
    its own study rather than resume that one.
    """
    shutil.copytree(built.project, dest, symlinks=True, ignore=lambda folder, names: [".ray"] if
                    Path(folder) == built.project else [])
    return dest

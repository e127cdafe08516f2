"""The one tiny run of every stage a test run shares (conftest's `built` fixture), instrumented while it runs.

Most integration modules need a reproduced tiny project; building it once per test run instead of once per module
is most of the suite's time, so it also runs in the background while the tests that do not read it run
(conftest.py). The run is the Prefect flow's first run over a fresh copy (`python -m flows.pipeline` against the
test run's Prefect server: every stage stale, each its own `dvc repro --single-item`, then `dvc exp save`), so
test_flow checks that run on the server instead of running the pipeline a second time. It is watched
twice, so that the modules that used to run a pipeline of their own only to watch it can read this one instead:
- an import hook (a `sitecustomize` on PYTHONPATH) writes, when a `python -m stages.<name>` process exits, the
  project modules it had loaded (test_stage_imports checks them against dvc.yaml's deps) and whether it had
  imported Ray (test_ray_preprocess: the local preprocessing never does); and, for every `python -m dvc` process,
  its arguments and start time (test_flow: which `dvc` commands the flow started, in order);
- strace, where installed, records every socket call of the flow and all its descendants (test_offline).
Both leave the run's outputs untouched. Tests never write into the built project: they take a `copy_built`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flows.workspace import copy_project, project_env
from multimodal.pipeline.stage_deps import PACKAGES
from tests.shared_services import alive

# Runs in every Python process of the run (PYTHONPATH); a `python -m stages.<name>` or `python -m dvc` process
# writes its record, at exit, to $STAGE_IMPORTS_DIR/<pid>.json.
HOOK = '''
import atexit
import json
import os
import sys
import time

PACKAGES = {packages!r}
STARTED = time.time()


def _dump():
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(spec, "name", None) or ""
    if not module.startswith(("stages.", "dvc.")):
        return
    record = {{"module": module, "argv": sys.argv[1:], "started": STARTED, "ray": "ray" in sys.modules}}
    if module.startswith("stages."):
        record["loaded"] = {{name: os.path.realpath(mod.__file__) for name, mod in list(sys.modules.items())
                            if getattr(mod, "__file__", None)
                            and (name == "__main__" or name.split(".")[0] in PACKAGES)}}
    with open(os.path.join(os.environ["STAGE_IMPORTS_DIR"], f"{{os.getpid()}}.json"), "w") as handle:
        json.dump(record, handle)


atexit.register(_dump)
'''

SOCKET_CALLS = "trace=connect,sendto,sendmsg,sendmmsg"


def traced(cmd: list[str], log: Path) -> list[str]:
    """`cmd` under strace, every socket call of it and its descendants written to `log`."""
    # --seccomp-bpf: only the traced calls stop the process, so the run is barely slower.
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", SOCKET_CALLS, "-e", "signal=none", "-o", str(log), *cmd]


@dataclass(frozen=True)
class Built:
    """A tiny project after the flow's run of every stage (nothing committed after it), and what watched it."""

    project: Path
    output: str                 # the flow's log, stdout and stderr: each stage's output in its task's log
    seconds: float
    imports: Path               # the import hook's records, one JSON per stage or `dvc` process
    trace: Path | None          # strace's log of the whole run; None where strace is not installed

    def stages_run(self) -> set[str]:
        return set(re.findall(r"Running stage '([^']+)'", self.output))

    def records(self) -> list[dict]:
        """The hook's records, in the order the processes started."""
        found = [json.loads(path.read_text()) for path in self.imports.glob("*.json")]
        return sorted(found, key=lambda record: record["started"])

    def stage_records(self) -> list[dict]:
        return [r for r in self.records() if r["module"].startswith("stages.")]

    def dump(self, *cmd: str) -> dict:
        """The record of the one stage process `python -m <cmd...>`, e.g. ("stages.preprocess", "image")."""
        [found] = [r for r in self.stage_records() if [r["module"], *r["argv"]] == list(cmd)]
        return found

    def dvc_commands(self) -> list[str]:
        """The `dvc` processes of the run, in start order, as their arguments (e.g. "repro --single-item tune")."""
        return [" ".join(r["argv"]) for r in self.records() if r["module"].startswith("dvc.")]


@dataclass(frozen=True)
class Building:
    """The shared run while it goes on in the background (`start`), as any worker of the test run sees it (a JSON
    record, tests/shared_services.py); `wait()` gives the `Built` once it has ended."""

    project: Path
    pid: int                    # the run's process group: a shell around the flow that writes `ended` at its end
    log: Path                   # the flow's output (stdout and stderr)
    imports: Path
    trace: Path | None
    started: float              # wall-clock time (time.time()): workers are other processes
    ended: Path                 # "<exit status> <end time>", written by the shell when the flow exits

    def record(self) -> dict:
        return {"project": str(self.project), "pid": self.pid, "log": str(self.log), "imports": str(self.imports),
                "trace": str(self.trace) if self.trace else None, "started": self.started, "ended": str(self.ended)}

    @classmethod
    def from_record(cls, record: dict) -> Building:
        return cls(Path(record["project"]), record["pid"], Path(record["log"]), Path(record["imports"]),
                   Path(record["trace"]) if record["trace"] else None, record["started"], Path(record["ended"]))

    def wait(self) -> Built:
        while not self.ended.exists():
            if not alive(self.pid) and not self.ended.exists():
                raise RuntimeError(f"the shared tiny run was ended before it finished:\n{self.log.read_text()[-10000:]}")
            time.sleep(0.5)
        status, end = self.ended.read_text().split()
        if int(status) != 0:
            raise RuntimeError(f"the shared tiny run failed:\n{self.log.read_text()[-10000:]}")
        return Built(self.project, self.log.read_text(), float(end) - self.started, self.imports, self.trace)


def start(base: Path, params: dict) -> Building:
    """Copies this repo to `base/project` with `params`, then starts the Prefect flow over it under the hook (and
    strace), in its own process group, and returns without waiting. The flow reports to the Prefect server
    PREFECT_API_URL names; with no retries, a failing stage fails the run at once."""
    project = copy_project(base / "project", params)
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(HOOK.format(packages=PACKAGES))
    imports = base / "imports"
    imports.mkdir()
    env = project_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "hook"), env.get("PYTHONPATH")) if p)
    env["STAGE_IMPORTS_DIR"] = str(imports)
    trace = base / "flow.trace" if shutil.which("strace") else None
    # A fresh copy has an empty DVC cache: no run-cache entry to restore, so every stage command runs.
    cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(project), "--retries", "0"]
    ended = base / "ended"
    # The shell records the flow's end itself: any worker may wait for it, and the one that started it may be gone.
    wrapped = ["bash", "-c", 'rc=0; "$@" || rc=$?; echo "$rc $(date +%s.%N)" > "$0.tmp" && mv "$0.tmp" "$0"',
               str(ended), *(traced(cmd, trace) if trace else cmd)]
    log = base / "flow.log"
    started = time.time()
    with log.open("w") as out:  # a file, not a pipe: nobody reads while it runs, and a full pipe would block it
        process = subprocess.Popen(wrapped, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Building(project, process.pid, log, imports, trace, started, ended)


def copy_built(built: Built, dest: Path) -> Path:
    """A private copy of the built project (git history, DVC cache and state included) at `dest`.

    Ray's study folder stays behind: it holds the built run's absolute paths, and a `tune` in the copy must start
    its own study rather than resume that one.
    """
    shutil.copytree(built.project, dest, symlinks=True, ignore=lambda folder, names: [".ray"] if
                    Path(folder) == built.project else [])
    return dest

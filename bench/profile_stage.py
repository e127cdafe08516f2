"""Where a stage's CPU time goes: the stage under py-spy (every Python process it starts, Ray workers included),
its samples sorted into the parts of the work, printed as a markdown table.

    pip install py-spy            # a bench tool, not a dependency of the pipeline
    python bench/profile_stage.py --project DIR --stage tune [--rate 20] [--out profile.raw]

DIR is a reproduced project (its stage's inputs present); the stage runs there as `python -m stages.<stage>`, its
outputs rewritten (a deterministic stage writes the same files). For `tune` the study folder `.ray/results` is moved
aside first, or the stage would continue a study that was cut off and train only what it lacked.

py-spy samples Python stacks only: Ray's C++ processes (GCS, raylet) and time a process spends waiting are not in
the table; the wall time is printed beside it. It also loses a Ray worker that `setup_worker.py` replaces by
`exec` (a trial with a runtime environment): its training is then missing here, and bench/epoch_floor.py measures
a trial's epoch part by part instead (it is the same `fit` as the unimodal references the driver trains). A sample is put into the first part, in the order of `PARTS`, that
one of its frames names; the order puts what is nested inside another part first (a checkpoint written inside a
trial's epoch counts as checkpoint, not as training).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.workspace import project_env  # noqa: E402

# (part, frame patterns): a frame is "function (file:line)"; a pattern matches if it is in the frame.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("imports (process start-up)", ("_find_and_load (",)),
    ("checkpoint: state + model written", ("save_state", "save_model (", "TrainingState.save")),
    ("Ray report: checkpoint upload, results", ("report (ray/", "_report (", "persist_current_checkpoint",
                                                "experiment_state", "save_to_dir")),
    ("validation pass", ("_val_metrics (",)),
    ("augmentation", ("Augmenter.__call__",)),
    ("batch reading (shards -> tensors)", ("SplitData.batch (", "SplitData.batches (")),
    ("backward", ("backward (torch/_tensor.py", "_engine_run_backward")),
    ("optimizer step + clip", ("Optimizer.", "clip_grad_norm_", "optimizer.py", "adamw.py")),
    ("forward", ("_call_impl (",)),
    ("model set-up + data opening", ("initial_model (", "load_splits (", "prepare_trial (")),
    ("other training loop", ("fit (multimodal/training/train.py",)),
    ("Ray (Python side)", ("ray/",)),
]
DRIVER_FINETUNE = "finetune (multimodal/training/finetune.py"
DRIVER_TUNE = "tune (stages/tune.py"


def classify(frames: list[str]) -> str:
    """The part of one stack (frames root first)."""
    text = ";".join(frames)
    for part, patterns in PARTS:
        if any(p in text for p in patterns):
            return part
    return "other"


def process_of(frames: list[str]) -> str:
    """'driver' (the stage's own process), 'trial' (a Ray worker) or 'Ray daemons' (dashboard, log monitor,
    agents), from the process frames py-spy puts first (root process first)."""
    procs = [f for f in frames if f.startswith("process ")]
    if len(procs) <= 1:
        return "driver"
    return "trial" if "default_worker.py" in procs[-1] or "ray::" in procs[-1] else "Ray daemons"


def aggregate(raw: Path) -> dict[tuple[str, str], int]:
    """{(who, part): samples}; who is trial, driver, or 'driver: unimodal references' (finetune in the stage)."""
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        who = process_of(frames)
        if who == "driver" and any(DRIVER_FINETUNE in f for f in frames) and any(DRIVER_TUNE in f for f in frames):
            who = "driver: unimodal references"
        counts[(who, classify(frames))] += int(n)
    return dict(counts)


def table(counts: dict[tuple[str, str], int], rate: int, wall: float) -> str:
    total = sum(counts.values())
    lines = [f"wall {wall:.1f} s; {total / rate:.1f} CPU-s of Python sampled at {rate} Hz", "",
             "| process | part | CPU s | share |", "|---|---|---:|---:|"]
    for (who, part), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        lines.append(f"| {who} | {part} | {n / rate:.1f} | {100 * n / total:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="a reproduced project folder")
    parser.add_argument("--stage", default="tune", help="stage module under stages/ (default: tune)")
    parser.add_argument("--arg", action="append", default=[], help="argument to the stage (e.g. a modality)")
    parser.add_argument("--rate", type=int, default=20, help="samples per second per process")
    parser.add_argument("--out", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy executable")
    args = parser.parse_args()
    project = args.project.resolve()
    if args.stage == "tune":
        shutil.rmtree(project / ".ray" / "results", ignore_errors=True)
    raw = args.out or Path(tempfile.mkdtemp()) / "profile.raw"
    cmd = [args.py_spy, "record", "--subprocesses", "--format", "raw", "--rate", str(args.rate), "--nonblocking",
           "-o", str(raw), "--", sys.executable, "-m", f"stages.{args.stage}", *args.arg]
    started = time.monotonic()
    subprocess.run(cmd, cwd=project, env={**project_env(), "PYTHONPATH": str(project)}, check=True)
    wall = time.monotonic() - started
    print(f"## `{args.stage}` under py-spy ({os.cpu_count()} CPUs)\n")
    print(table(aggregate(raw), args.rate, wall))


if __name__ == "__main__":
    main()

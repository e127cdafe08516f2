"""Wall time and peak memory of each stage of the default pipeline, in a scratch copy of the project.

Each stage runs alone (`dvc repro --single-item <stage>`) while a sampler follows the resident memory of the
whole process tree (Ray workers included). The no-op `dvc repro` afterwards is the in-run baseline: ratios are
printed against it and against the total, since absolute times on shared machines are noisy.

    python bench/pipeline_stages.py                 # default params (about 10 minutes on 2 cores)
    python bench/pipeline_stages.py --tiny          # the integration test's tiny params
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from flows.workspace import copy_project, project_env, run

STAGES = ["ingest", "validate", "preprocess@image", "preprocess@audio", "preprocess@text", "baseline", "align", "tune",
          "evaluate"]
TINY = {("demo", "n_samples"): 120, ("align", "epochs"): 1, ("tune", "num_samples"): 2,
        ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2}}


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """(seconds, peak RSS bytes of the process tree) of one command; raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], tree_rss(parent))
            except psutil.Error:
                break
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    return time.perf_counter() - start, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny params instead of the default dataset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project", TINY if args.tiny else None)
        rows = [(stage, *measure(["dvc", "repro", "--single-item", stage], project)) for stage in STAGES]
        noop_s, noop_rss = measure(["dvc", "repro"], project)
        metrics = json.loads((project / "metrics/evaluate.json").read_text())
        run(["dvc", "status"], project)
    total = sum(r[1] for r in rows)
    print("| stage | wall s | share of total | peak RSS MiB |\n|---|---|---|---|")
    for stage, seconds, rss in rows:
        print(f"| {stage} | {seconds:.1f} | {seconds / total:.0%} | {rss / 2**20:.0f} |")
    print(f"| **total** | **{total:.1f}** | 100% | {max(r[2] for r in rows) / 2**20:.0f} (max) |")
    print(f"| no-op `dvc repro` (baseline) | {noop_s:.1f} | full run = {total / noop_s:.0f}x no-op | {noop_rss / 2**20:.0f} |")
    print("\ntest metrics:", json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    main()

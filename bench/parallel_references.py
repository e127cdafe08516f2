"""The tune stage's unimodal references: one after another in this process with 2 torch threads (how the stage
trained them before issue 21) against one Ray task per modality with `--threads` threads each (how it trains them
now, `multimodal.tuning.references`), side by side in one run, on a reproduced project's data and best config.

    python bench/parallel_references.py --project DIR [--threads 1] [--parallel-runs 2]

DIR is a reproduced project (align's outputs, the shards and models/best/best_config.yaml present); nothing is
written into it (Ray's HOME and temp files go to a temporary folder). The parallel references run
`--parallel-runs` times: their metrics and model bytes must be identical run to run. The sequential ones are compared
with the references DIR's own `tune` recorded (metrics/tune.json): the same code path, so the same numbers.
Prints each run's seconds, epochs and val accuracies, the ratio parallel / sequential and the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multimodal.pipeline.params import load_params, stage_params  # noqa: E402
from multimodal.tuning.params import TUNE  # noqa: E402
from multimodal.tuning.references import Reference, train_reference, train_references  # noqa: E402
from multimodal.tuning.search import trial_resources  # noqa: E402


def summary(name: str, refs: dict[str, Reference], seconds: float) -> dict:
    digest = {m: hashlib.sha256(b"".join(k.encode() + v for k, v in sorted(r.files.items()))).hexdigest()[:12]
              for m, r in refs.items()}
    row = {"run": name, "seconds": round(seconds, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
           **{f"{m}_val_accuracy": round(r.val_accuracy, 4) for m, r in refs.items()},
           **{f"{m}_epochs": r.epochs for m, r in refs.items()},
           **{f"{m}_seconds": round(r.seconds, 1) for m, r in refs.items()}, "model_sha256": digest}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="parallel-refs-"))
    try:
        bench(scratch)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


def bench(scratch: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="tune.cpus_per_trial of the parallel run")
    parser.add_argument("--sequential-threads", type=int, default=2)
    parser.add_argument("--parallel-runs", type=int, default=2)
    parser.add_argument("--skip-sequential", action="store_true")
    args = parser.parse_args()
    project = args.project.resolve()
    # Ray's workers import this checkout's code (the driver's cwd and PYTHONPATH), never DIR's copy of it.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["TMPDIR"] = str(scratch)
    from multimodal.pipeline.ray_cluster import join_ray

    os.chdir(REPO)
    join_ray(None, scratch, num_cpus=os.cpu_count(), num_gpus=0, object_store_memory=512 * 2**20,
             _temp_dir=str(scratch / "ray"))
    os.chdir(project)
    params = load_params(Path("params.yaml"), stage="tune", schema=TUNE)
    raw = params.raw_params()
    values = yaml.safe_load(Path(params.base.paths.models, "best", "best_config.yaml").read_text())
    modalities = list(params.preprocess.modalities)
    recorded = json.loads(Path(params.base.paths.metrics, "tune.json").read_text())
    print(json.dumps({"project": str(project), "cpus": os.cpu_count(), "modalities": modalities,
                      "recorded": {m: recorded.get(f"unimodal/{m}/val_accuracy") for m in modalities}}))
    parallel = stage_params({**raw, "tune": {**raw["tune"], "cpus_per_trial": args.threads}}, stage="tune",
                            schema=TUNE)
    rows, sequential = [], None

    def run_parallel(number: int) -> None:
        started = time.monotonic()
        refs = train_references(parallel, values, modalities, project,
                                trial_resources(parallel.tune, parallel.base.device))
        rows.append(summary(f"parallel #{number}, {args.threads} thread(s) per task", refs, time.monotonic() - started))

    # Parallel, sequential, parallel: the two kinds see the same drift of a shared machine's load.
    run_parallel(1)
    if not args.skip_sequential:
        started, refs = time.monotonic(), {}
        for m in modalities:  # the stage before issue 21: in the driver, one after another
            refs[m] = train_reference(m, values, str(project), raw, "cpu", args.sequential_threads)
        sequential = summary(f"sequential, {args.sequential_threads} threads", refs, time.monotonic() - started)
        rows.append(sequential)
        same = all(refs[m].val_accuracy == recorded.get(f"unimodal/{m}/val_accuracy") for m in modalities)
        print(json.dumps({"sequential_equals_recorded": same}))
    for number in range(2, args.parallel_runs + 1):
        run_parallel(number)
    runs = [r for r in rows if r["run"].startswith("parallel")]
    keys = [k for k in runs[0] if k.endswith("val_accuracy") or k == "model_sha256"]
    print(json.dumps({"parallel_runs_identical": all({k: r[k] for k in keys} == {k: runs[0][k] for k in keys}
                                                     for r in runs)}))
    if sequential:
        print(json.dumps({"ratio_parallel_over_sequential": [round(r["seconds"] / sequential["seconds"], 3)
                                                             for r in runs]}))


if __name__ == "__main__":
    main()

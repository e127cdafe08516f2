"""The tune stage before and after issue 21, side by side in one run, on the same reproduced project's data.

Settings, each a run of `python -m stages.tune` with this code:
- `before`: the defaults before the issue: one trial at a time on 2 torch threads, ASHA grace 4 / reduction factor 2.
  The references then take 2 CPUs each, so on two cores they train one after another on 2 threads, as the driver
  trained them before (bit for bit: bench/BENCHMARKS.md), and only after the search (the study's best trial, the
  first, is not the one training last);
- `ASHA 2/3, 1 at a time, 2 threads`: this code, the new ASHA default, one trial at a time (what the new ASHA
  alone gives);
- `default`: this code and its params (two trials side by side on one thread each, the ASHA decisions in trial
  order, the references as parallel Ray tasks, started during the search once its best trial is certain).

Prints per setting the stage's wall time, the search's seconds and epochs (from the stage's log), the seconds from
the search's end to the stage's result (the wait for the references), the best validation accuracy and the ratio
against `before`. `--check-order` adds the default one trial at a time with the same thread: its tables must equal
the default's (`multimodal/tuning/rungs.py`).

    python bench/tune_concurrency.py --project DIR [--repeats 1] [--check-order]

DIR is a project reproduced up to `align` with the default params; its params.yaml is rewritten during the run and
restored at the end, its tune outputs are overwritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

BEFORE = "before (1 at a time, 2 threads, ASHA 4/2)"
ASHA_ALONE = "ASHA 2/3, 1 at a time, 2 threads"
DEFAULT = "default (2 at a time, 1 thread each)"
ORDER_CHECK = "default, 1 at a time (order check)"
TABLES = ("metrics/tune_trials.csv", "metrics/tune_epochs.csv")
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO __main__: "


def run_stage(workdir: Path, tune: dict, log: Path) -> dict:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["tune"].update(tune)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run([sys.executable, "-m", "stages.tune"], cwd=workdir, stdout=handle, stderr=subprocess.STDOUT,
                       check=True)
    wall = time.perf_counter() - started
    text = log.read_text()
    search = re.search(STAMP + r"search: (\d+) trials, (\d+) epochs in (\d+) s", text)
    done = re.search(STAMP + r"best trial \d+ -> .*'best_val_accuracy': ([0-9.]+)", text)
    when = lambda stamp: dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    return {"wall": wall, "search": float(search[4]), "epochs": int(search[3]),
            "after": (when(done[1]) - when(search[1])).total_seconds(), "best": float(done[2]),
            "tables": [(workdir / t).read_text() for t in TABLES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--check-order", action="store_true")
    args = parser.parse_args()
    project = args.project.resolve()
    original = (project / "params.yaml").read_text()
    settings = {BEFORE: {"max_concurrent_trials": 1, "cpus_per_trial": 2,
                         "asha": {"max_epochs": 20, "grace_period": 4, "reduction_factor": 2}},
                ASHA_ALONE: {"max_concurrent_trials": 1, "cpus_per_trial": 2}, DEFAULT: {}}
    if args.check_order:
        settings[ORDER_CHECK] = {"max_concurrent_trials": 1}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    try:
        for repeat in range(args.repeats):
            for index, (name, tune) in enumerate(settings.items()):
                (project / "params.yaml").write_text(original)
                log = project / f"tune_bench_{repeat}_{index}.log"
                runs[name].append(run_stage(project, tune, log))
                r = runs[name][-1]
                print(f"[{repeat}] {name}: {r['wall']:.0f} s (search {r['search']:.0f} s, {r['epochs']} epochs; "
                      f"then {r['after']:.0f} s), best val {r['best']:.4f}; load {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        (project / "params.yaml").write_text(original)
    base = min(r["wall"] for r in runs[BEFORE])
    print(f"\nfastest of {args.repeats} per setting\n")
    print("| setting | stage s | search s | epochs | search end -> result s | best val acc | stage / before |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        wall, search, after = (min(r[k] for r in rs) for k in ("wall", "search", "after"))
        print(f"| {name} | {wall:.0f} | {search:.0f} | {rs[0]['epochs']} | {after:.0f} | {rs[0]['best']:.4f} | "
              f"{wall / base:.2f}x |")
    if args.check_order:
        same = runs[DEFAULT][0]["tables"] == runs[ORDER_CHECK][0]["tables"]
        print(f"\norder check: tables {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()

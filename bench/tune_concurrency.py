"""The tune stage with trials one at a time on all cores versus side by side on one core each, in one run.

Runs `python -m stages.tune` in a project reproduced up to `align` (a scratch copy: the stage's outputs and
params.yaml are rewritten, params.yaml restored at the end), once per setting, alternating when `--repeats` > 1,
and prints the stage's wall time, the search's and the unimodal references' seconds (from the stage's log), the
trials' epochs and the best validation accuracy, with ratios against the first setting. `--check-order` adds the
new setting one trial at a time with the same threads: its tables must equal the side-by-side ones
(`multimodal/tuning/rungs.py`).

    python bench/tune_concurrency.py --project DIR [--repeats 1] [--check-order]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

SETTINGS = {
    "1 at a time, 2 threads (before)": {"max_concurrent_trials": 1, "cpus_per_trial": 2},
    "2 at a time, 1 thread each (default)": {"max_concurrent_trials": 2, "cpus_per_trial": 1},
}
ORDER_CHECK = {"1 at a time, 1 thread (order check)": {"max_concurrent_trials": 1, "cpus_per_trial": 1}}
TABLES = ("metrics/tune_trials.csv", "metrics/tune_epochs.csv")


def run_stage(project: Path, tune: dict, log: Path) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"].update(tune)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run([sys.executable, "-m", "stages.tune"], cwd=project, stdout=handle, stderr=subprocess.STDOUT,
                       check=True)
    wall = time.perf_counter() - started
    text = log.read_text()
    search = re.search(r"search: (\d+) trials, (\d+) epochs in (\d+) s", text)
    references = re.findall(r"unimodal (\w+): \d+ epochs, (\d+) s since the search", text)
    best = re.search(r"'best_val_accuracy': ([0-9.]+)", text)
    return {"wall": wall, "search": float(search[3]), "epochs": int(search[2]),
            "references": float(references[-1][1]) if references else 0.0, "best": float(best[1]),
            "tables": [(project / t).read_text() for t in TABLES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--check-order", action="store_true")
    args = parser.parse_args()
    project = args.project.resolve()
    settings = {**SETTINGS, **(ORDER_CHECK if args.check_order else {})}
    original = (project / "params.yaml").read_text()
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    try:
        for repeat in range(args.repeats):
            for name, tune in settings.items():
                log = project / f"tune_bench_{len(runs[name])}_{list(settings).index(name)}.log"
                runs[name].append(run_stage(project, tune, log))
                r = runs[name][-1]
                print(f"[{repeat}] {name}: {r['wall']:.0f} s (search {r['search']:.0f} s, {r['epochs']} epochs; "
                      f"references {r['references']:.0f} s), best val {r['best']:.4f}; load {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        (project / "params.yaml").write_text(original)
    first = list(settings)[0]
    base = {k: min(r[k] for r in runs[first]) for k in ("wall", "search", "references")}
    print(f"\n| setting | stage s | search s | references s | epochs | best val acc | stage / {first.split(' (')[0]} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        wall, search, refs = (min(r[k] for r in rs) for k in ("wall", "search", "references"))
        print(f"| {name} | {wall:.0f} | {search:.0f} | {refs:.0f} | {rs[0]['epochs']} | {rs[0]['best']:.4f} | "
              f"{wall / base['wall']:.2f}x |")
    if args.check_order:
        side, alone = runs[list(SETTINGS)[1]][0], runs[list(ORDER_CHECK)[0]][0]
        print(f"\norder check: tables {'identical' if side['tables'] == alone['tables'] else 'DIFFER'}")


if __name__ == "__main__":
    main()

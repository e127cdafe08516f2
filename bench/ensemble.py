"""The selected ensemble against the single best model, on the demo's unseen speakers and on bench/generalize.py's
hard setting: one full `dvc repro` per setting in a scratch copy of the project, then the figures evaluate wrote
(test accuracy with 95% intervals, the paired ensemble-minus-single-best difference, the fused-minus-best-single-
modality difference, which model is the default). Nothing is chosen on test: the ensemble stage selects on
validation rows, evaluate only scores.

    python bench/ensemble.py                       # both settings: about 2 x 15 min on 2 cores (not measured)
    python bench/ensemble.py --settings hard
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `multimodal` importable
from bench.generalize import SETTINGS
from flows.workspace import copy_project, run

DEMO = {"default": "demo (unseen speakers)", "hard": "hard setting (bench/generalize.py)"}


def interval(report: dict, key: str, points: bool = False) -> str:
    scale, unit = (100, " pts") if points else (100, "%")
    value, low, high = report.get(key), report.get(f"{key}_ci95_lo"), report.get(f"{key}_ci95_hi")
    if value is None:
        return "n/a"
    sign = "+" if points else ""
    return (f"{value * scale:{sign}.1f}{unit} [{low * scale:{sign}.1f}, {high * scale:{sign}.1f}] "
            f"(n={report.get(f'{key}_n')})")


def one_setting(setting: str, base: Path) -> dict:
    project = copy_project(base / setting, SETTINGS[setting])
    started = time.perf_counter()
    run(["dvc", "repro"], project)
    report = json.loads((project / "metrics" / "evaluate.json").read_text())
    ensemble = json.loads((project / "ensemble" / "ensemble.json").read_text())
    return {"seconds": time.perf_counter() - started, "report": report, "weights":
            {m["name"]: m["weight"] for m in ensemble["members"]}, "validation": ensemble["validation"]["ensemble"]}


def describe(setting: str, result: dict) -> str:
    r = result["report"]
    return "\n".join([
        f"{DEMO[setting]}  ({result['seconds']:.0f} s for `dvc repro`)",
        f"  ensemble         {interval(r, 'ensemble_accuracy')}  weights {result['weights']}",
        f"  single best      {r['single_best']}: {r['single_best_accuracy'] * 100:.1f}%",
        f"  ensemble - best  {interval(r, 'ensemble_minus_single_best', points=True)}",
        f"  default model    {r['default_model']} (chosen on validation)",
        (f"  fused - best single modality ({r['best_unimodal']}, chosen on validation): "
         f"{interval(r, 'fused_minus_best_unimodal', points=True)}"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        for setting in args.settings:
            results[setting] = one_setting(setting, Path(tmp))
            print(describe(setting, results[setting]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The demo with its opt-in fourth modality: image, audio, text and video, through the default pipeline.

A scratch copy of the project runs `dvc repro` with `demo.modalities` and `preprocess.modalities` extended by
`video` (every other knob as in params.yaml), then prints the fused vs unimodal vs classical-baseline table of
`metrics/evaluate.json` (each model on the rows it can see, 95% intervals) and each stage's wall time.

    python bench/four_modalities.py                      # about 20 minutes on 2 cores
    python bench/four_modalities.py --keep /tmp/four      # keep the scratch project
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `multimodal` importable
from flows.workspace import copy_project, run  # noqa: E402

MODALITIES = ["image", "audio", "text", "video"]


def table(metrics: dict) -> list[str]:
    """Markdown rows: model, n, test accuracy [95% CI], macro F1, fused minus it on the rows both see."""
    rows = ["| model | n | test accuracy [95% CI] | macro F1 | fused - model, paired [95% CI] |", "|---|---|---|---|---|"]
    for name, model in metrics["models"].items():
        low, high = model["ci95"]
        paired = metrics["paired"].get(name)
        diff = (f"{100 * paired['fused_minus']:+.1f} [{100 * paired['fused_minus_ci95'][0]:+.1f}, "
                f"{100 * paired['fused_minus_ci95'][1]:+.1f}]" if paired else "")
        rows.append(f"| {name} | {model['n']} | {model['accuracy']:.3f} [{low:.3f}, {high:.3f}] | "
                    f"{model['macro_f1']:.3f} | {diff} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="four-") as tmp:
        project = copy_project((args.keep or Path(tmp)) / "project", {
            ("demo", "modalities"): MODALITIES, ("preprocess", "modalities"): MODALITIES})
        start = time.perf_counter()
        out = run(["dvc", "repro"], project).stdout
        total = time.perf_counter() - start
        metrics = json.loads((project / "metrics/evaluate.json").read_text())
        tune = json.loads((project / "metrics/tune.json").read_text())
    stages = re.findall(r"Running stage '([^']+)'", out)
    print(f"dvc repro with {MODALITIES}: {total:.0f} s; stages run: {stages}")
    print(f"fusion {metrics['fusion']}, best trial val {tune.get('best_val_accuracy')}, "
          f"best unimodal (on val) {metrics['best_unimodal']}")
    print("\n".join(table(metrics)))
    print(json.dumps({k: v for k, v in metrics.items() if k.startswith("fused_")}, indent=1))


if __name__ == "__main__":
    main()

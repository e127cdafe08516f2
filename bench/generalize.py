"""Generalization to speakers never heard in training: one run, seen-voice vs unseen-voice splits, each of
{no augmentation, augmentation} x {full, lora, frozen}, beside the classical baselines of the same run, in the
default setting and in a harder one of our own making.

For each setting a scratch copy of the project builds the demo once (`dvc repro demo`). The *unseen* split is
the pipeline's own (whole speakers held out for val and test); the *seen* split is the same files with the
`group` column dropped from the manifest, so `ingest` stratifies by label and every speaker lands in every
split. Each split then runs `dvc repro align baseline` in the scratch copy and trains every configuration
in-process with the product's own code (`trial_train_config` -> `finetune`), choosing nothing on test.

    python bench/generalize.py                         # both settings, about 40 minutes on 2 cores
    python bench/generalize.py --settings default --strategies full frozen
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `multimodal` importable
from flows.workspace import copy_project, run, set_params
from multimodal.data.manifest import MANIFEST_NAME, read_manifest, write_manifest
from multimodal.evaluation.scoring import model_scores
from multimodal.training.finetune import finetune
from multimodal.training.load_data import load_labels, load_splits
from multimodal.training.train import predict
from multimodal.tuning.trial import trial_train_config
from stages.check_params import load_all

# The harder setting: noisier speech, fewer training voices, fainter images.
SETTINGS = {
    "default": {},
    "hard": {("demo", "audio_snr_db"): [-10, -2], ("demo", "speakers"): 20, ("demo", "image_noise"): 0.45},
}
# Knobs every configuration shares (the centre of the default search space); the grid varies the rest.
SHARED = {"lr": 1e-3, "fusion": "concat", "dropout": 0.2}


def seen_voice_dataset(project: Path) -> Path:
    """The demo's files under a manifest without `group` (hard links, no copies): a split that ignores speakers."""
    source = project / "data" / "demo"
    target = project / "data" / "demo_seen"
    for path in source.rglob("*"):
        if path.is_file() and path.name != MANIFEST_NAME:
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / path.relative_to(source))
    frame = read_manifest(source / MANIFEST_NAME)
    write_manifest(frame.drop(columns=["group"]), target / MANIFEST_NAME)
    return target


def deep_row(params, strategy: str, strength: float, device: torch.device) -> dict:
    """Train one configuration; val accuracy (what would choose it) and test accuracy with its interval."""
    cfg = trial_train_config(params, {**SHARED, "strategy": strategy, "augment_strength": strength})
    data = load_splits(params, ("train", "val", "test"), strategy=strategy)
    start = time.perf_counter()
    model, spec, result = finetune(Path(params.base.paths.aligned), load_labels(params), data["train"], data["val"],
                                   cfg, device)
    test = data["test"].only(spec.modalities)
    pred = predict(model, test, 256, device).argmax(1).numpy()
    scores = model_scores("fused", test.labels.numpy(), pred, resamples=1000, seed=params.base.seed)
    return {"val": result.best.val_accuracy, "test": scores["accuracy"], "ci95": scores["ci95"],
            "epochs": len(result.history), "seconds": time.perf_counter() - start}


def run_split(project: Path, strategies: list[str], strengths: list[float], device: torch.device) -> dict:
    run(["dvc", "repro", "align", "baseline"], project)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        params = load_all("params.yaml")
        baseline = json.loads(Path("metrics/baseline.json").read_text())
        rows = {"baseline": baseline}
        for strength in strengths:
            for strategy in strategies:
                rows[f"{strategy}, augment {strength:g}"] = deep_row(params, strategy, strength, device)
                print(f"    {strategy:6s} augment {strength:g}: {rows[f'{strategy}, augment {strength:g}']}",
                      flush=True)
        return rows
    finally:
        os.chdir(cwd)


def table(results: dict) -> str:
    """Markdown: one row per configuration, val/test per split; the baselines first."""
    lines = ["| setting | model | seen: val | seen: test | unseen: val | unseen: test |", "|---|---|---|---|---|---|"]
    for setting, splits in results.items():
        names = [k for k in splits["unseen"] if k != "baseline"]
        for key in ("early_fusion", "image", "audio", "text"):
            cells = []
            for split in ("seen", "unseen"):
                entry = splits[split]["baseline"].get(key, {})
                cells += [f"{entry.get('val_accuracy') or float('nan'):.3f}",
                          f"{entry.get('test_accuracy') or float('nan'):.3f}"]
            lines.append(f"| {setting} | logistic regression, {key} | " + " | ".join(cells) + " |")
        for name in names:
            cells = []
            for split in ("seen", "unseen"):
                r = splits[split][name]
                cells += [f"{r['val']:.3f}", f"{r['test']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"]
            lines.append(f"| {setting} | deep fused, {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--strategies", nargs="+", default=["full", "lora", "frozen"])
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.0, 1.0], help="augment_strength values")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = torch.device("cpu")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="generalize-") as tmp:
        for setting in args.settings:
            start = time.perf_counter()
            project = copy_project(Path(tmp) / setting, SETTINGS[setting])
            run(["dvc", "repro", "demo"], project)
            results[setting] = {}
            for split in ("unseen", "seen"):
                print(f"{setting} / {split} speakers", flush=True)
                if split == "seen":
                    set_params(project, {("ingest", "dataset"): str(seen_voice_dataset(project))})
                results[setting][split] = run_split(project, args.strategies, args.strengths, device)
            print(f"{setting}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\n" + table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=lambda v: v.tolist() if isinstance(v, np.ndarray)
                                       else str(v)))


if __name__ == "__main__":
    main()

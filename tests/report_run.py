"""A small run folder for the report tests: a real validation of a hostile manifest, plus the metrics and plots
files the later stages write (evaluate.json from the real `fair_report`, a DVCLive confusion file, tune files).

Manifest content is hostile everywhere it can reach the report: a label (in every split, so it is a valid class),
a sample id, a text cell, a split value and the failure reasons of the quarantined rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from multimodal.evaluation.evaluate import ensemble_headline, fair_report
from multimodal.evaluation.explanations import write_explanations
from multimodal.storage.io import write_csv_atomic, write_json
from stages.validate import validate_into
from tests.unit.conftest import params_section
from tests.unit.data.test_validation import OVERRIDES, row, write_dataset, write_png, write_wav
from tests.unit.hostile import HOSTILE

LABELS = ["cat", HOSTILE]


def hostile_rows(root: Path) -> list[dict]:
    rows = []
    for split in ("train", "val", "test"):
        for k, label in enumerate(LABELS):
            for j in range(2):
                i = len(rows)
                image = write_png(root / "img" / f"{i}.png").relative_to(root).as_posix()
                audio = write_wav(root / "aud" / f"{i}.wav", freq=200 + 37 * i).relative_to(root).as_posix()
                sample_id = HOSTILE + str(i) if (k, j) == (1, 0) else f"s{i}"
                rows.append(row(sample_id, label, split, image, audio, text=f"{HOSTILE[:40]} {i}"))
    # Quarantined: a split that is not one, and a text too long; both reasons quote the hostile cell.
    rows.append(row("bad-split" + HOSTILE, "cat", HOSTILE, text="ok"))
    rows.append(row("too-long", "cat", "train", text="y" * 60 + HOSTILE))
    return rows


def build_run(base: Path) -> dict[str, Path]:
    """Writes raw/, validated/, docs/, metrics/, plots/, models/best/best_config.yaml under `base`."""
    raw, validated, docs = base / "raw", base / "validated", base / "docs"
    write_dataset(raw, hostile_rows(raw))
    options = params_section("validate", **OVERRIDES, on_invalid="quarantine", docs_dir=docs)
    validate_into(raw, validated, options)
    metrics, plots = base / "metrics", base / "plots"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    preds = {name: np.where(rng.random(40) < hit, y, 1 - y)
             for name, hit in (("fused", 0.9), ("unimodal_audio", 0.7), ("baseline_early_fusion", 0.6),
                               ("ensemble", 0.9))}
    preds["unimodal_audio"][:5] = -1  # rows that model cannot see
    report = {"fusion": "gated", **fair_report(y, preds, {"unimodal_audio": 0.7}, resamples=200, seed=0)}
    # The ensemble lost on validation: the single best stays the default.
    report = ensemble_headline(report, y, preds, "fused", "fused", resamples=200, seed=0)
    report["calibration"] = {"fused": {"ece": 0.05, "bins": 10}, HOSTILE: {"ece": 0.1, "bins": 10}}  # a new block
    report["models"]["fused"].update(ece=0.08, ece_calibrated=0.03, temperature=1.7)  # as evaluate's with_details
    write_json(metrics / "evaluate.json", report, sort_keys=False)
    # Reliability before and after temperature scaling, and two explained rows, as evaluate writes them.
    bins = [{"bin_lo": 0.8, "bin_hi": 0.9, "confidence": 0.85, "accuracy": 0.7, "count": 30},
            {"bin_lo": 0.9, "bin_hi": 1.0, "confidence": 0.95, "accuracy": 0.8, "count": 10}]
    for name in ("fused", "fused_calibrated"):
        write_csv_atomic(plots / "evaluate" / "reliability" / f"{name}.csv", pd.DataFrame(bins))
    maps = {f"row{j}/image/{kind}": torch.rand(8, 8) - 0.5 for j in (0, 1) for kind in ("input", "attribution")}
    maps.update({"row0/audio/input": torch.rand(16, 12), "row0/audio/attribution": torch.rand(16, 12)})
    explained = [{"sample_id": f"s{j}", "label": LABELS[j], "predicted": LABELS[0], "probability": 0.9 - j / 4,
                  "correct": j == 0, "contributions": {"image": 0.2 - j / 3, "audio": 0.1 if j == 0 else None,
                                                       "text": 0.05},
                  "cells": {"image": f"img/{j}.png", "audio": "wav/0.wav" if j == 0 else "", "text": f"{HOSTILE} {j}"},
                  "maps": {m: {"key": "x", "input": f"row{j}/{m}/input", "attribution": f"row{j}/{m}/attribution",
                               "layout": "sequence" if m == "audio" else "picture", "completeness": [0.41, 0.42]}
                           for m in (("image", "audio") if j == 0 else ("image",))}} for j in (0, 1)]
    write_explanations(plots / "evaluate" / "explanations", explained, maps)
    write_json(metrics / "tune.json", {"best_trial": "00001", "best_epoch": 3, "best_val_accuracy": 0.8, "trials": 2})
    write_json(metrics / "robustness.json", {"noise": [{"level": 0, "accuracy": 0.9}, {"level": 1, "accuracy": 0.5}]})
    with (metrics / "tune_trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["trial", "config.lr", "val_accuracy"], ["00000", "0.001", "0.7"], ["00001", "0.01", "0.8"]])
    confusion = [{"actual": LABELS[a], "predicted": LABELS[p]} for a, p in zip(y, preds["fused"])]
    write_json(plots / "evaluate" / "plots" / "sklearn" / "confusion_matrix.json", confusion)
    # An SVG carrying a script and an external image: shown through <img>, where neither runs nor loads.
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><script>alert(1)</script>'
           '<image href="http://evil.example/p.png" width="10" height="10"/><rect width="40" height="20"/></svg>')
    (plots / "extra").mkdir(parents=True)
    (plots / "extra" / "curve.svg").write_text(svg)
    best = base / "models" / "best" / "best_config.yaml"
    best.parent.mkdir(parents=True)
    best.write_text(yaml.safe_dump({"fusion": "gated", "lr": 0.01, "dropout": 0.1, "strategy": "full"}))
    return {"raw": raw, "validated": validated, "docs": docs, "metrics": metrics, "plots": plots, "best_config": best}

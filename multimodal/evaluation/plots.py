"""The tables `evaluate` writes beside its metrics, under `<base.paths.plots>/evaluate/`; `dvc.yaml` declares how
`dvc plots show` draws them. Every file is deterministic given the params and data, except `efficiency.json`.

- `per_class/<model>.csv`, a row per class: class, precision, recall, f1, support (on the rows the model sees).
- `reliability/<model>.csv`, a row per non-empty confidence bin: bin_lo, bin_hi, confidence (mean in the bin),
  accuracy, count; `reliability/<model>_calibrated.csv` the same at the model's temperature (deep models only:
  `multimodal.models.temperature`, fitted on validation by tune).
- `missing_modality.csv`, a row per set of modalities removed from the fused model (`none`, `a`, `a+b`):
  removed, accuracy, minus_clean, ci95_lo, ci95_hi, n, n_left_empty (rows left with no modality, counted wrong).
- `corruption/<modality>_<kind>.csv`, a row per corruption level (0: clean): level, fused, unimodal (accuracies
  on the n rows having the modality), n.
- `explanations/`: a few test rows the report explains (`multimodal.evaluation.explanations`).
- `efficiency.json`: `multimodal.evaluation.efficiency.efficiency_report` (parameters per component, latency,
throughput,
  peak memory per device and batch size), not deterministic.

`<model>` is evaluate's name of a model: `fused`, `fused_only_<m>`, `unimodal_<m>`, `baseline_<m>`,
`baseline_early_fusion`. Each model's ECE is in `metrics/evaluate.json` (`models.<model>.ece`, and `ece_calibrated`, `temperature`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from multimodal.storage.io import atomic_dir, write_json, write_text_atomic

PER_CLASS, RELIABILITY, MISSING, CORRUPTION, EFFICIENCY = (
    "per_class", "reliability", "missing_modality.csv", "corruption", "efficiency.json")
CALIBRATED = "_calibrated"  # suffix of a reliability table at the model's temperature
EXPLANATIONS = "explanations"  # the report's explained rows (multimodal.evaluation.explanations)
CURVE_COLUMNS = ["level", "fused", "unimodal", "n"]


def _table_dir(target: Path, tables: Mapping[str, pd.DataFrame]) -> None:
    """A folder of `<name>.csv` files replacing `target` whole: no stale file of a model no longer evaluated."""
    with atomic_dir(target) as tmp:
        for name, frame in tables.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)


def write_tables(out_dir: Path, per_class: Mapping[str, list[dict]], reliability: Mapping[str, dict],
                 missing: list[dict], curves: list[dict]) -> None:
    """Every deterministic table above (`reliability[model]` as `multimodal.evaluation.calibration.reliability` returns
    it,
    `curves` as `multimodal.evaluation.robustness.corruption_curves` does)."""
    _table_dir(out_dir / PER_CLASS, {name: pd.DataFrame(rows) for name, rows in per_class.items() if rows})
    _table_dir(out_dir / RELIABILITY, {name: pd.DataFrame(r["bins"]) for name, r in reliability.items() if r["bins"]})
    write_text_atomic(out_dir / MISSING, pd.DataFrame(missing).to_csv(index=False))
    frame = pd.DataFrame(curves)
    tables = {}
    if len(frame):
        for (modality, kind), rows in frame.groupby(["modality", "corruption"], sort=False):
            tables[f"{modality}_{kind}"] = rows.reindex(columns=CURVE_COLUMNS)
    _table_dir(out_dir / CORRUPTION, tables)


def write_efficiency(out_dir: Path, report: dict) -> None:
    write_json(out_dir / EFFICIENCY, report, sort_keys=False)

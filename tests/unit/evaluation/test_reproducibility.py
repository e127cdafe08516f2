"""A fresh run's metrics against the committed ones: inside the committed 95% intervals, or named."""

from __future__ import annotations

import json
from pathlib import Path

from multimodal.evaluation.reproducibility import drift

REPO = Path(__file__).resolve().parents[3]


def test_the_committed_run_is_within_its_own_intervals() -> None:
    committed = json.loads((REPO / "metrics/evaluate.json").read_text())
    assert any(k.endswith("_ci95_lo") for k in committed)
    assert drift(committed, committed) == []


def test_a_metric_outside_the_interval_is_named() -> None:
    committed = {"fused_accuracy": 0.953, "fused_accuracy_ci95_lo": 0.93, "fused_accuracy_ci95_hi": 0.97,
                 "fused_minus_baseline": 0.1, "fused_minus_baseline_ci95_lo": 0.05,
                 "fused_minus_baseline_ci95_hi": 0.15}
    # The other CPU: fused 0.962 instead of 0.953, inside the interval.
    assert drift(committed, {**committed, "fused_accuracy": 0.962}) == []
    problems = drift(committed, {"fused_accuracy": 0.90})
    assert problems == ["fused_accuracy: 0.9000 outside the committed 95% interval [0.9300, 0.9700] (committed 0.9530)",
                        "fused_minus_baseline: missing in the fresh run"]

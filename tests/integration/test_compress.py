"""The compress stage in the shared tiny run: its variants, scored on the rows evaluate scored, and its front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.built import Built

pytestmark = pytest.mark.integration


def test_compress_scores_every_variant_on_the_test_rows_and_declares_its_front(built: Built, reproduced: Path):
    table = json.loads((built.project / "metrics/compress.json").read_text())
    evaluated = json.loads((built.project / "metrics/evaluate.json").read_text())
    assert set(table) == {"original", "int8", "distilled_int8", "pruned_80"}
    # The original end to end from processor outputs is the model evaluate scored, on the same rows.
    assert table["original"]["n"] == evaluated["fused_accuracy_n"]
    assert table["original"]["accuracy"] == pytest.approx(evaluated["fused_accuracy"], abs=1e-9)
    assert all(row["n"] == table["original"]["n"] == row.get("paired_n", row["n"]) for row in table.values())
    assert table["int8"]["size_ratio"] < 0.3 and table["pruned_80"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    for variant in set(table) - {"original"}:
        folder = built.project / "models_compressed" / variant
        assert {p.suffix for p in folder.rglob("*") if p.is_file()} <= {".json", ".safetensors", ".txt"}
    front = json.loads((reproduced / "plots/compress/front.json").read_text())
    assert {row["variant"] for row in front} == set(table) and all(row["latency_ms"] > 0 for row in front)
    declared = [p for p in yaml.safe_load((reproduced / "dvc.yaml").read_text())["plots"]
                if "${base.paths.plots}/compress/front.json" in p]
    assert [(d["x"], d["y"]) for p in declared for d in p.values()] == [("latency_ms", "accuracy")]

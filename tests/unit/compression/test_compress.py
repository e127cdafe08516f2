"""The stage's work on a tiny saved model: every variant saved, reloaded from its files, and scored on exactly the
rows the original is scored on, with the same scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multimodal.compression.compress import build_variants, measure
from multimodal.compression.measure import ORIGINAL, meets_target, probabilities_on_test
from multimodal.compression.variant import COMPRESSION, load_variant
from tests.unit.compression.tiny import CPU, save_tiny_best
from tests.unit.conftest import params_section

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_variant_is_scored_on_the_original_rows_and_measured(tmp_path: Path):
    splits, _ = save_tiny_best(tmp_path / "best")
    cfg = params_section("compress", int8={"min_params": 1}, prune={"sparsities": [0.5, 0.8], "epochs": 1},
                         distill={"epochs": 1, "encoders": {"text": {"num_hidden_layers": 1}}})
    timing = params_section("evaluate").efficiency.model_copy(update={"batch_sizes": [1, 4], "warmup": 0,
                                                                      "repeats": 1})
    made = build_variants(tmp_path / "best", tmp_path / "out", splits, cfg, CPU)
    assert set(made) == {"int8", "distilled", "distilled_int8", "pruned_50", "pruned_80"}
    assert all((folder / COMPRESSION).is_file() for folder in made.values())
    # Each variant calibrated as its own, on the validation rows it sees (predict applies it).
    fitted = {name: json.loads((folder / "temperature.json").read_text()) for name, folder in made.items()}
    assert all(f["fitted_on"] == "val" and f["n"] > 0 and f["val_nll_after"] <= f["val_nll_before"] + 1e-9
               for f in fitted.values())
    # No file a variant is loaded from is a pickle: JSON, safetensors, and the tokenizer's own text files.
    suffixes = {p.suffix for folder in made.values() for p in folder.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".txt"}
    rows = {r["variant"]: r for r in measure(tmp_path / "best", made, splits, cfg, 200, timing, 0, [CPU], CPU)}
    assert next(iter(rows)) == ORIGINAL and set(rows) == {ORIGINAL, *made}
    # The rows each model sees are the original's (a row lacking every modality is no one's).
    seen = {name: ~np.isnan(probabilities_on_test(*load_variant(folder), splits.test, 8, CPU)).any(1)
            for name, folder in {ORIGINAL: tmp_path / "best", **made}.items()}
    assert all(np.array_equal(mask, seen[ORIGINAL]) for mask in seen.values())
    n = int(seen[ORIGINAL].sum())
    for name, row in rows.items():
        assert row["n"] == n and 0 <= row["accuracy"] <= 1 and row["accuracy_ci95_lo"] <= row["accuracy"]
        assert {"cpu_b1_latency_ms", "cpu_b4_throughput_per_s", "weights_bytes", "latency_ms"} <= set(row)
        if name != ORIGINAL:
            assert row["paired_n"] == n
            assert row["minus_original"] == pytest.approx(row["accuracy"] - rows[ORIGINAL]["accuracy"])
            assert row["minus_original_ci95_lo"] <= row["minus_original"] <= row["minus_original_ci95_hi"]
    # Tiny layers: headers, biases and scales weigh more than on the demo (0.204x there).
    assert rows["int8"]["agreement"] >= 0.9 and rows["int8"]["size_ratio"] < 0.6
    assert rows["pruned_80"]["model_bytes"] < 0.5 * rows[ORIGINAL]["model_bytes"]  # stored sparse
    assert rows["pruned_80"]["sparsity"] == pytest.approx(0.8, abs=1e-2)
    assert rows["distilled"]["parameters"] < rows[ORIGINAL]["parameters"]


@pytest.mark.parametrize(("within", "size", "speed", "met"), [
    (True, 0.25, 1.0, True), (True, 0.9, 2.0, True), (True, 0.26, 1.9, False), (False, 0.1, 5.0, False)])
def test_the_target_is_one_point_at_a_quarter_of_the_size_or_twice_the_throughput(within, size, speed, met):
    assert meets_target({"within_1_point": within, "size_ratio": size, "cpu_throughput_ratio": speed}) is met


def test_every_row_of_the_front_has_the_same_keys() -> None:
    # DVC's plot loader fails on rows of differing keys ("argument of type 'NoneType' is not iterable").
    from multimodal.compression.measure import table

    timing = [{"device": "cpu", "batch_size": 1, "latency_ms_per_sample": 2.0, "throughput_per_s": 500.0,
               "peak_memory_mib": 1.0}]
    accuracy = {"original": {"accuracy": 0.9, "n": 10, "accuracy_ci95": [0.8, 1.0]},
                "int8": {"accuracy": 0.9, "n": 10, "accuracy_ci95": [0.8, 1.0], "minus_original": 0.0,
                         "minus_original_ci95": [0.0, 0.0]}}
    rows = table(accuracy, {"original": 4, "int8": 1}, {"original": timing, "int8": timing},
                 {"int8": {"sparsity": None, "kind": "int8"}})
    assert [list(r) for r in rows] == [list(rows[0])] * 2
    assert rows[0]["minus_original"] is None and rows[1]["minus_original_ci95_lo"] == 0.0

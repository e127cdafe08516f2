"""bench/scale.py: the N-row manifest over the demo's files, and the table it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from multimodal.data.manifest import assign_splits, group_overlap

REPO = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
scale = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scale)


def demo_frame(size: int = 60, speakers: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [f"s{i:05d}" for i in range(size)],
        "label": [str(i % 10) for i in range(size)],
        "group": [f"spk{i % speakers}" for i in range(size)],
        "image": [f"images/s{i:05d}.png" if i % 7 else "" for i in range(size)],
        "text": [f"text {i}" for i in range(size)],
    })


def test_row_i_is_demo_row_i_mod_size_under_a_new_id_and_a_group_per_block():
    demo = demo_frame()
    frame = scale.scaled_manifest(demo, 150)
    assert len(frame) == 150 and frame["sample_id"].is_unique
    assert not set(frame["sample_id"]) & set(demo["sample_id"])
    for i in (0, 59, 60, 149):
        row, source = frame.iloc[i], demo.iloc[i % 60]
        assert row[["label", "image", "text"]].tolist() == source[["label", "image", "text"]].tolist()
        assert row["group"] == f"{source['group']}-b{i // 60}"
    assert frame["group"].nunique() == 6 * 3  # speakers x blocks (60, 60, 30 rows): groups grow with N


def test_the_scaled_manifest_still_gets_a_group_disjoint_split():
    frame = scale.scaled_manifest(demo_frame(), 600)
    split = assign_splits(frame, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert not group_overlap(frame.assign(split=split))


def test_table_gives_the_ratio_of_the_largest_to_the_smallest_size_per_stage():
    def run(n, wall, rss):
        return {"n": n, "stages": {"align": {"wall_s": wall, "cpu_s": wall, "peak_rss_mb": rss}},
                "disk_bytes_per_sample": {"preprocessed/image": 2048.0}}

    text = scale.table({"sizes": {"1000": run(1000, 10.0, 500.0), "10000": run(10000, 95.0, 2000.0)}})
    assert "| 10,000 | align | 95.0 | 95.0 | 2000 | 105 |" in text
    assert "| align | 9.50x | 9.50x | 4.00x |" in text and "10k/1k" in text
    assert "| 1,000 | 2.0 |" in text


def test_a_failing_stage_is_named_with_the_tail_of_its_output(tmp_path):
    boom = [sys.executable, "-c", "import sys; print('loaded'); sys.exit('bad row 7')"]
    with pytest.raises(SystemExit, match=r"(?s)stage align failed \(exit 1\).*loaded.*bad row 7"):
        scale.measure("align", boom, tmp_path)


def test_measure_reports_the_stage_process_own_peak_rss(tmp_path):
    grow = [sys.executable, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"]
    figures = scale.measure("ingest", grow, tmp_path)
    assert figures["peak_rss_mb"] > 200 and figures["wall_s"] > 0

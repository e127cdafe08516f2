"""The report's explained rows: picked by a seeded rule (right and wrong), written for the report to draw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multimodal.evaluation.evaluate import ModelOnTestSplit
from multimodal.evaluation.explanations import MAPS, ROWS, explain_rows, pick_rows, write_explanations
from multimodal.evaluation.scoring import ABSTAIN
from multimodal.models.model import Embedder, ModelSpec, MultimodalModel
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders
from tests.unit.conftest import TINY_SPECS, knobs

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rows_are_half_right_half_wrong_seeded_and_complete_first():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 0, 0, 2, 2, 0, ABSTAIN, 1, 0, 1, 0])  # wrong: 2, 4, 8, 11; unseen: 7
    complete = np.array([True] * 10 + [False] * 2)
    rows = pick_rows(y, pred, complete, 4, seed=42)
    assert rows == sorted(rows) and rows == pick_rows(y, pred, complete, 4, seed=42)
    assert sum(pred[rows] == y[rows]) == 2 and all(complete[rows]) and 7 not in rows
    assert any(pick_rows(y, pred, complete, 4, seed=s) != rows for s in range(5))  # the seed moves the draw
    # Too few wrong rows: right ones fill in; too few complete rows: any row the model sees.
    assert len(pick_rows(y, np.where(pred == ABSTAIN, 0, y), complete, 3, seed=0)) == 3
    assert len(pick_rows(y, pred, complete, 11, seed=0)) == 11


def test_explained_rows_carry_contributions_and_attribution_maps(tmp_path):
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, ["image", "audio"], [], {"audio": "utterance_bins"})
    model = MultimodalModel(Embedder(encoders, 8), "concat", 3, 0.0, knobs("concat")).eval()
    n = 5
    masks = {"image": torch.tensor([True, True, False, True, True]), "audio": torch.ones(n, dtype=torch.bool)}
    data = SplitData([f"s{i}" for i in range(n)], torch.tensor([0, 1, 2, 0, 1]),
                     {"image": {"pixel_values": torch.randn(n, 3, 8, 8)}, "audio": {"input_values": torch.randn(n, 16, 16)}},
                     masks)
    spec = ModelSpec(["image", "audio"], {}, ["x", "y", "z"], 8, "concat", 0.0, {}, {})
    reader = ModelOnTestSplit(model, spec, data, temperature=1.3)
    cells = {"image": [f"img/{i}.png" for i in range(n)], "audio": [f"wav/{i}.wav" for i in range(n)]}
    records, arrays = explain_rows(reader, [1, 2], data.labels.numpy(), spec.labels, cells, 4, torch.device("cpu"))
    write_explanations(tmp_path / "explanations", records, arrays)

    rows = json.loads((tmp_path / "explanations" / ROWS).read_text())
    maps = load_file(str(tmp_path / "explanations" / MAPS))
    assert [r["sample_id"] for r in rows] == ["s1", "s2"] and rows[1]["cells"]["image"] == "img/2.png"
    assert rows[1]["contributions"]["image"] is None and rows[1]["contributions"]["audio"] is not None
    assert set(rows[0]["maps"]) == {"image", "audio"} and set(rows[1]["maps"]) == {"audio"}  # no image on row 2
    assert maps[rows[0]["maps"]["image"]["input"]].shape == maps[rows[0]["maps"]["image"]["attribution"]].shape \
        == (8, 8)
    assert maps[rows[0]["maps"]["audio"]["input"]].shape == (16, 16)  # features x frames
    assert rows[0]["correct"] == (rows[0]["predicted"] == rows[0]["label"]) and 0 < rows[0]["probability"] <= 1

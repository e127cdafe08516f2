"""The ONNX bundle of a tiny saved model (attention fusion, text read as cached features, real files through the real
processors): onnxruntime agrees with PyTorch on every row and on random masks, rows missing modalities included;
`predict --onnx` writes what `predict` on PyTorch writes; `inputs.json` says how to feed the graph."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from multimodal.shipping.backends import OnnxBackend, TorchBackend
from multimodal.shipping.export import PARITY, TOLERANCE, check_parity, export_bundle
from multimodal.shipping.graph import OPSET
from multimodal.storage.dataset import SplitData
from stages.predict import main as predict_main
from tests.unit.shipping.test_predict import LABELS, MODALITIES
from tests.unit.shipping.tiny_model import build_tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path, SplitData, dict]:
    """(dataset folder, model folder, bundle folder, the rows checked, the parity report)."""
    tmp = tmp_path_factory.mktemp("export")
    dataset, model_dir, test = build_tiny_model(tmp)
    report = export_bundle(model_dir, tmp / "onnx", test, batch_size=5)
    return dataset, model_dir, tmp / "onnx", test, report


def test_every_row_agrees_and_the_figures_are_written(exported):
    _, _, bundle, _, report = exported
    assert report["passed"] and report["predictions_identical"] and report["max_abs_diff"] <= TOLERANCE
    assert report["rows"] == 12 and report["opset"] == OPSET
    # Rows lacking each modality in turn were part of the check.
    assert {"audio+text", "image+text", "image+audio", "image+audio+text"} <= set(report["rows_by_modalities"])
    assert json.loads((bundle / PARITY).read_text()) == report
    assert sorted(p.name for p in bundle.iterdir()) == ["inputs.json", "model.onnx", "parity.json", "processors"]


def test_random_masks_with_rows_missing_any_modality(exported):
    _, model_dir, bundle, test, _ = exported
    torch_side, onnx_side = TorchBackend.load(model_dir, CPU), OnnxBackend.load(bundle, threads=1)
    gen = torch.Generator().manual_seed(7)
    rows = test.batch(torch.arange(len(test)))
    masks = {m: torch.rand(len(rows), generator=gen) < 0.5 for m in MODALITIES}
    masks["image"][:3] = torch.tensor([True, False, False])  # image only, audio only, text only
    masks["audio"][:3] = torch.tensor([False, True, False])
    masks["text"][:3] = torch.tensor([False, False, True])
    for m in MODALITIES:  # an absent row's inputs are zeros, as read_batch and load_split give them
        for key, value in rows.inputs[m].items():
            rows.inputs[m][key] = torch.where(masks[m].view(-1, *[1] * (value.dim() - 1)), value, 0)
    data = SplitData(rows.sample_ids, rows.labels, rows.inputs, masks)
    present = data.any_present()
    assert not present.all() and present.any()  # some row has no modality at all: finite on both sides
    for size in (1, len(data)):  # the batch axis is dynamic
        part = data.batch(torch.arange(size))
        expected, got = torch_side.probabilities(part), onnx_side.probabilities(part)
        assert torch.isfinite(got).all()
        assert (expected - got).abs().max() <= TOLERANCE
        assert torch.equal(expected.argmax(1), got.argmax(1))


def test_inputs_json_says_how_to_feed_the_graph(exported):
    import onnxruntime

    _, _, bundle, _, _ = exported
    meta = json.loads((bundle / "inputs.json").read_text())
    assert meta["opset"] == OPSET and meta["labels"] == LABELS and meta["modalities"] == MODALITIES
    shapes = {i["name"]: (i["shape"], i["dtype"]) for i in meta["inputs"]}
    assert shapes == {
        "image.pixel_values": (["batch", 3, 8, 8], "float32"),
        "audio.input_values": (["batch", 16, 16], "float32"),
        "text.input_ids": (["batch", 8], "int64"),
        "text.token_type_ids": (["batch", 8], "int64"),
        "text.attention_mask": (["batch", 8], "int64"),
        "image.mask": (["batch"], "bool"), "audio.mask": (["batch"], "bool"), "text.mask": (["batch"], "bool"),
    }
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in meta["inputs"]]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    image, audio, text = (meta["processing"][m] for m in MODALITIES)
    assert image["processor"]["size"] == {"height": 8, "width": 8}
    assert image["processor"]["image_mean"] == [0.5] * 3 and image["processor"]["image_std"] == [0.5] * 3
    assert audio["processor"]["num_mel_bins"] == 16 and audio["processor"]["sampling_rate"] == 16000
    assert audio["settings"]["max_length"] == 16 and "resampled" in audio["decode"]
    assert text["settings"]["max_length"] == 8 and text["processor"]["vocab_size"] > 1000
    assert (bundle / "processors" / "text" / "tokenizer_config.json").is_file()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_onnxruntime_equals_predict_on_torch(exported, tmp_path):
    dataset, model_dir, bundle, _, _ = exported
    (dataset / "img" / "corrupt.png").write_bytes(b"not a png")
    extra = pd.DataFrame([("ok", "img/1.png", "wav/1.wav", "blue sky"), ("corrupt", "img/corrupt.png", "", "red"),
                          ("audio-only", "", "wav/2.wav", ""), ("nothing", "", "", "")],
                         columns=["sample_id", "image", "audio", "text"])
    manifest = dataset / "mixed.csv"
    pd.concat([extra, pd.read_csv(dataset / "manifest.csv", keep_default_na=False)]).to_csv(manifest, index=False)
    predict_main(["--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path / "torch.csv"),
                  "--batch-size", "3", "--device", "cpu"])
    predict_main(["--onnx", str(bundle), "--manifest", str(manifest), "--out", str(tmp_path / "onnx.csv"),
                  "--batch-size", "3"])
    on_torch, on_onnx = read_rows(tmp_path / "torch.csv"), read_rows(tmp_path / "onnx.csv")
    assert list(on_torch[0]) == list(on_onnx[0]) and len(on_torch) == len(on_onnx) == 16
    for a, b in zip(on_torch, on_onnx):
        assert (a["sample_id"], a["predicted"], a["modalities_used"], a["error"]) == \
            (b["sample_id"], b["predicted"], b["modalities_used"], b["error"])
        if a["predicted"]:
            assert max(abs(float(a[f"p_{c}"]) - float(b[f"p_{c}"])) for c in LABELS) <= TOLERANCE
    assert on_onnx[1]["error"].startswith("image 'img/corrupt.png'") and on_onnx[3]["predicted"] == ""


def test_a_disagreement_fails_the_check(exported):
    _, model_dir, _, test, _ = exported
    good, bad = TorchBackend.load(model_dir, CPU), TorchBackend.load(model_dir, CPU)
    with torch.no_grad():
        bad.model.head.bias[0] += 5.0  # class x wins everywhere
    report = check_parity(good, bad, test, batch_size=4)
    assert not report["passed"] and not report["predictions_identical"] and report["disagreements"]
    assert report["max_abs_diff"] > TOLERANCE

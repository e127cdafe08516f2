"""The classical baseline stage on a tiny dataset of real PNG, WAV and text, preprocessed by the real processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from multimodal.evaluation.baseline import (
    MODELS,
    PREDICTIONS,
    PROBABILITIES,
    VAL_PROBABILITIES,
    fit_baselines,
    read_predictions,
    read_probabilities,
)
from multimodal.evaluation.evaluate import fair_report
from multimodal.evaluation.params import Baseline
from multimodal.evaluation.scoring import ABSTAIN
from multimodal.models.classical import ClassicalModel
from multimodal.pipeline.stage_params import StageParams
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.storage.dataset import SplitData, load_split
from multimodal.storage.io import read_json, write_json
from stages.baseline import baseline
from stages.check_params import check_all

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[3]
LABELS = ["low", "mid", "high"]
PER_CLASS = {"train": 10, "val": 5, "test": 5}
WORDS = ["red", "blue", "green"]
FILLER = ["a", "small", "thing", "seen", "here", "today", "quite", "often"]


def write_dataset(raw: Path, seed: int = 0) -> pd.DataFrame:
    """Each label has its own image bar, tone and colour word, plus noise; ~20% of each modality missing."""
    gen = np.random.default_rng(seed)
    (raw / "images").mkdir(parents=True)
    (raw / "audio").mkdir()
    rows = []
    for split, count in PER_CLASS.items():
        for k, label in enumerate(LABELS):
            for i in range(count):
                sid = f"{split}-{label}-{i}"
                present = gen.random(3) >= 0.2
                if not present.any():
                    present[k] = True
                pixels = gen.normal(60, 30, (28, 28))
                pixels[4 + 8 * k: 8 + 8 * k] += 150
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L").save(raw / "images" / f"{sid}.png")
                t = np.arange(8000) / 16000
                wave = 0.3 * np.sin(2 * np.pi * [400, 1000, 2500][k] * t) + 0.05 * gen.normal(size=t.size)
                sf.write(raw / "audio" / f"{sid}.wav", wave.astype(np.float32), 16000)
                text = " ".join([*gen.choice(FILLER, 3), WORDS[k], *gen.choice(FILLER, 2)])
                rows.append({"sample_id": sid, "label": label, "split": split,
                             "image": f"images/{sid}.png" if present[0] else "",
                             "audio": f"audio/{sid}.wav" if present[1] else "", "text": text if present[2] else ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[StageParams, pd.DataFrame]:
    """StageParams of this repo with paths in a scratch folder holding a validated manifest and real shards."""
    root = tmp_path_factory.mktemp("baseline")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["base"]["paths"] = {k: str(root / v) for k, v in raw["base"]["paths"].items()}
    params = check_all(raw)
    paths = params.base.paths
    frame = write_dataset(Path(paths.raw))
    Path(paths.validated).mkdir(parents=True)
    frame.to_csv(Path(paths.validated) / "manifest.csv", index=False)
    write_json(Path(paths.validated) / "labels.json", LABELS)
    for modality in params.preprocess.modalities:
        preprocess_modality(frame, Path(paths.raw), Path(paths.preprocessed) / modality, modality=modality,
                            spec=params.modalities[modality], batch_size=32, shard_size=64)
    return params, frame


def test_baseline_fits_every_modality_and_the_early_fusion_on_real_features(project):
    params, frame = project
    metrics = baseline(params)
    assert set(metrics) == {"image", "audio", "text", "early_fusion"}
    test = frame[frame["split"] == "test"]
    for modality in ("image", "audio", "text"):
        # Fitted and scored only on the rows that have the modality.
        assert metrics[modality]["n_test"] == (test[modality] != "").sum()
        assert metrics[modality]["n_val"] == ((frame["split"] == "val") & (frame[modality] != "")).sum()
        assert metrics[modality]["test_accuracy"] >= 0.8, (modality, metrics[modality])
        assert metrics[modality]["C"] in params.baseline.c_grid
    assert metrics["early_fusion"]["n_test"] == len(test) and metrics["early_fusion"]["test_accuracy"] >= 0.9
    pooled = params.baseline.image_size
    assert metrics["image"]["features"] == 3 * pooled * pooled  # RGB pixels pooled from 28x28
    assert metrics["audio"]["features"] == 2 * params.baseline.n_mfcc
    assert metrics["early_fusion"]["features"] == sum(metrics[m]["features"] for m in ("image", "audio", "text")) + 3
    assert read_json(Path(params.base.paths.metrics) / "baseline.json") == metrics

    written = pd.read_csv(Path(params.base.paths.baseline) / PREDICTIONS, dtype=str, keep_default_na=False)
    assert written["sample_id"].tolist() == test["sample_id"].tolist()
    for modality in ("image", "audio", "text"):
        assert ((written[modality] == "").to_numpy() == (test[modality] == "").to_numpy()).all()


def test_baseline_is_deterministic(project):
    params, _ = project
    out = Path(params.base.paths.baseline) / PREDICTIONS
    baseline(params)
    first = out.read_bytes(), (Path(params.base.paths.metrics) / "baseline.json").read_bytes()
    baseline(params)
    assert (out.read_bytes(), (Path(params.base.paths.metrics) / "baseline.json").read_bytes()) == first


def test_evaluate_scores_the_baseline_on_the_rows_the_deep_models_see(project):
    params, _ = project
    paths = params.base.paths
    metrics = baseline(params)
    test = load_split(pd.read_csv(Path(paths.validated) / "manifest.csv", dtype=str, keep_default_na=False),
                      "test", LABELS, Path(paths.preprocessed), params.preprocess.modalities)
    order = list(reversed(range(len(test))))  # evaluate's rows need not be in the file's order
    test = test.take(torch.tensor(order))
    preds = read_predictions(Path(paths.baseline) / PREDICTIONS, test.sample_ids, LABELS)
    y = test.labels.numpy()
    # The deep models' view of the same rows: a unimodal model has an input exactly where the mask is set.
    deep = {"fused": y.copy(), **{f"unimodal_{m}": np.where(test.masks[m].numpy(), y, -1) for m in test.modalities}}
    report = fair_report(y, {**deep, **preds}, {"unimodal_image": 0.9}, 200, seed=0)
    for modality in ("image", "audio", "text"):
        seen = int(test.masks[modality].sum())
        assert report["models"][f"baseline_{modality}"]["n"] == seen == report["models"][f"unimodal_{modality}"]["n"]
        assert report["paired"][f"baseline_{modality}"]["n"] == seen
        assert report["models"][f"baseline_{modality}"]["accuracy"] == pytest.approx(metrics[modality]["test_accuracy"])
    assert report["baseline_accuracy"] == pytest.approx(metrics["early_fusion"]["test_accuracy"])
    assert report["fused_minus_baseline_n"] == len(y)


def test_probabilities_are_written_for_the_rows_each_model_sees(project):
    params, frame = project
    baseline(params)
    paths = params.base.paths
    ids = frame.loc[frame["split"] == "test", "sample_id"].tolist()[::-1]  # any row order
    preds = read_predictions(Path(paths.baseline) / PREDICTIONS, ids, LABELS)
    probs = read_probabilities(Path(paths.baseline) / PROBABILITIES, ids, LABELS)
    assert set(probs) == set(preds) == {"baseline_image", "baseline_audio", "baseline_text", "baseline_early_fusion"}
    for name, proba in probs.items():
        seen = preds[name] != ABSTAIN
        assert (~np.isnan(proba).any(axis=1) == seen).all(), name
        assert np.allclose(proba[seen].sum(axis=1), 1.0)
        assert (proba[seen].argmax(axis=1) == preds[name][seen]).all(), name  # predict is the most probable class
    with pytest.raises(ValueError, match="no probability column for class.*'extra'"):
        read_probabilities(Path(paths.baseline) / PROBABILITIES, ids, [*LABELS, "extra"])
    # The validation rows too (ensemble selection reads them), in the same form.
    val_ids = frame.loc[frame["split"] == "val", "sample_id"].tolist()
    val = read_probabilities(Path(paths.baseline) / VAL_PROBABILITIES, val_ids, LABELS)
    assert set(val) == set(probs)
    for name, proba in val.items():
        seen = ~np.isnan(proba).any(axis=1)
        assert seen.any() and np.allclose(proba[seen].sum(axis=1), 1.0), name


def test_saved_models_give_the_fitted_pipelines_probabilities_on_one_split_alone(project):
    """Each model saved under `models/baseline_<name>/` (JSON + safetensors, no pickle), reloaded and applied to
    the test split's tensors alone (the TF-IDF uses its saved vocabulary and IDF, fitted on train), gives the
    probabilities the fitted scikit-learn pipeline wrote."""
    params, frame = project
    baseline(params)
    paths = params.base.paths
    test = load_split(frame, "test", LABELS, Path(paths.preprocessed), params.preprocess.modalities)
    written = read_probabilities(Path(paths.baseline) / PROBABILITIES, test.sample_ids, LABELS)
    folders = sorted(p.name for p in (Path(paths.baseline) / MODELS).iterdir())
    assert folders == sorted(written) == ["baseline_audio", "baseline_early_fusion", "baseline_image", "baseline_text"]
    for name in folders:
        folder = Path(paths.baseline) / MODELS / name
        model = ClassicalModel.load(folder)
        proba = model.predict_proba({m: test.inputs[m] for m in model.modalities},
                                    {m: test.masks[m].numpy() for m in model.modalities})
        assert np.isnan(proba).any(axis=1).tolist() == np.isnan(written[name]).any(axis=1).tolist(), name
        seen = ~np.isnan(proba).any(axis=1)
        np.testing.assert_allclose(proba[seen], written[name][seen], rtol=0, atol=1e-9, err_msg=name)
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert {p.suffix for p in files if p.parent == folder} == {".json", ".safetensors"}, name
        assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".bin", ".joblib"}], name
    assert ClassicalModel.load(Path(paths.baseline) / MODELS / "baseline_text").recipes["text"].kind == "token_tfidf"


def test_predictions_of_other_samples_are_refused(project):
    params, _ = project
    baseline(params)
    with pytest.raises(ValueError, match="lacks test sample.*not-a-sample.*re-run `dvc repro baseline`"):
        read_predictions(Path(params.base.paths.baseline) / PREDICTIONS, ["not-a-sample"], LABELS)


def test_a_split_without_a_modality_gets_no_predictions_for_it():
    """No test row has audio: the audio model abstains on every test row, the others are unaffected."""
    gen = torch.Generator().manual_seed(0)

    def split(name: str, n: int, audio: bool) -> SplitData:
        y = torch.arange(n) % 2
        mel = y[:, None, None] + 0.2 * torch.randn(n, 6, 8, generator=gen)
        inputs = {"image": {"pixel_values": y[:, None, None, None] + 0.2 * torch.randn(n, 3, 4, 4, generator=gen)},
                  "audio": {"input_values": mel} if audio else {}}
        masks = {"image": torch.ones(n, dtype=torch.bool), "audio": torch.full((n,), audio)}
        return SplitData([f"{name}{i}" for i in range(n)], y, inputs, masks)

    cfg = Baseline(c_grid=[1.0], max_iter=200, image_size=8, n_mfcc=4, max_tokens=10)
    fitted = fit_baselines({"train": split("t", 20, True), "val": split("v", 10, True),
                            "test": split("s", 10, False)}, cfg, seed=0, labels=["a", "b", "c"])
    metrics, preds, by_split = fitted.metrics, fitted.predictions, fitted.probabilities
    probs = by_split["test"]
    # Validation has audio: its probabilities are saved for ensemble selection.
    assert not np.isnan(by_split["val"]["audio"]).any() and by_split["val"]["audio"].shape == (10, 3)
    assert (preds["audio"] == ABSTAIN).all() and metrics["audio"]["n_test"] == 0
    assert np.isnan(probs["audio"]).all() and probs["image"].shape == (10, 3)
    # Class 2 has no train row: probability 0; the others sum to 1 and their argmax is the prediction.
    assert (probs["image"][:, 2] == 0).all() and np.allclose(probs["image"].sum(1), 1.0)
    assert (probs["image"].argmax(1) == preds["image"]).all()
    assert metrics["audio"]["test_accuracy"] is None and metrics["audio"]["val_accuracy"] == 1.0
    assert metrics["image"]["test_accuracy"] == 1.0 and metrics["early_fusion"]["n_test"] == 10

"""`predict` on real files with a saved model that reads `text` as cached features (as `align.freeze` makes it):
the encoder bundled beside the model replaces the cache, bad cells become errors of their rows only, and the
predictions are those evaluate makes from the cached features."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from multimodal.data.manifest import SPLITS, read_manifest
from multimodal.evaluation.baseline import fit_baselines
from multimodal.evaluation.evaluate import FUSED, inputs_for, load_readers, reader_probabilities
from multimodal.evaluation.params import Baseline
from multimodal.evaluation.scoring import top_label
from multimodal.modalities.base import FeatureInput
from multimodal.models.bundle import bundle_inputs, load_for_raw_inputs
from multimodal.models.ensemble import EnsembleSpec, Member, combine
from multimodal.models.model import load_model, save_model
from multimodal.models.temperature import load_temperature
from multimodal.preprocessing.preprocess import preprocess_modality
from multimodal.shipping import predict as predict_module
from multimodal.shipping.predict import output_columns, predict_manifest
from multimodal.storage.dataset import SplitData, load_split
from multimodal.training.align import build_encoders
from multimodal.training.calibrate import calibrate_saved
from multimodal.training.finetune import initial_model
from multimodal.training.train import predict
from stages.predict import main
from tests.unit.conftest import TINY_SPECS, train_config, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
LABELS = ["x", "y", "z"]
MODALITIES = ["image", "audio", "text"]
NORM = {"image": "per_image", "audio": "utterance_bins", "text": "none"}
WORDS = {"x": "red apples", "y": "blue sky above", "z": "green grass grows tall"}


def write_dataset(root: Path, n: int = 12) -> pd.DataFrame:
    """Real PNG/WAV files and texts for `n` rows; each row lacks one modality in turn, some have all."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        image, audio, text = f"img/{i}.png", f"wav/{i}.wav", f"{WORDS[label]} {i}"
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "wav").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / image)
        t = np.arange(4000) / 16000
        sf.write(root / audio, (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t)).astype(np.float32), 16000)
        cells = {"image": image, "audio": audio, "text": text}
        if i % 4 < 3:
            cells[MODALITIES[i % 4]] = ""
        rows.append({"sample_id": f"s{i}", "label": label, **cells})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "manifest.csv", index=False)
    return frame


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dataset folder, models folder with `best`, aligned folder), as preprocess, align and tune write them."""
    tmp = tmp_path_factory.mktemp("predict")
    dataset = tmp / "dataset"
    frame = write_dataset(dataset).assign(split="test")
    # 1. preprocess: the real decoders and processors into shards.
    for m in MODALITIES:
        preprocess_modality(frame, dataset, tmp / "pre" / m, modality=m, spec=TINY_SPECS[m], batch_size=5, shard_size=8)
    test = load_split(frame, "test", LABELS, tmp / "pre", MODALITIES)
    # 2. align (untrained: the weights need not be good, only the same everywhere): text frozen and cached; the
    #    test rows stand in for every split.
    torch.manual_seed(0)
    encoders = build_encoders(TINY_SPECS, MODALITIES, ["text"], NORM)
    aligned = tmp / "aligned"
    aligned.mkdir()
    write_aligned(aligned, {s: test for s in SPLITS}, encoders, ["text"], TINY_SPECS, dim=8, input_norm=NORM,
                  batch_size=4)
    # 3. tune: a model that reads text as cached features, saved and given its inputs.
    model, spec = initial_model(aligned, LABELS, MODALITIES, train_config(strategy="full", input_norm=NORM))
    torch.nn.init.normal_(model.head.weight)  # a head far from zero: distinct probabilities per row
    save_model(model, spec, tmp / "models" / "best")
    bundle_inputs(aligned, tmp / "models" / "best")
    return dataset, tmp / "models", aligned


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predictions_equal_what_evaluate_scores_from_the_cached_features(saved, tmp_path):
    dataset, models, aligned = saved
    cached, spec = load_model(models / "best")
    assert spec.feature_modalities == ["text"]
    model, _, processing = load_for_raw_inputs(models / "best")
    assert not any(isinstance(e, FeatureInput) for e in model.embedder.encoders.values())
    # The settings preprocess used; the text tokenizer (named `minilm`) is the copy saved in the model folder.
    assert {m: s.model_dump(exclude={"tokenizer"}) for m, s in processing.items()} == \
        {m: s.model_dump(exclude={"tokenizer"}) for m, s in TINY_SPECS.items()}
    assert processing["text"].options["tokenizer"] == str((models / "best" / "processors" / "text").resolve())

    summary = predict_manifest(models / "best", dataset / "manifest.csv", tmp_path / "p.csv", 5, CPU)
    rows = read_rows(tmp_path / "p.csv")
    frame = read_manifest(dataset / "manifest.csv").assign(split="test")
    test = load_split(frame, "test", LABELS, dataset.parent / "pre", MODALITIES)
    expected = predict(cached, inputs_for(spec, test, aligned), 4, CPU)
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in LABELS] for r in rows])
    assert [r["sample_id"] for r in rows] == test.sample_ids
    assert torch.allclose(probs, expected, atol=1e-5)
    scored = reader_probabilities(load_readers(models, test, aligned, CPU), 4, CPU)  # what evaluate scores
    assert [LABELS.index(r["predicted"]) for r in rows] == top_label(scored[FUSED]).tolist()
    assert all(r["error"] == "" for r in rows)
    assert [r["modalities_used"] for r in rows[:4]] == ["audio+text", "image+text", "image+audio", "image+audio+text"]
    assert summary.labelled == 12 and summary.correct == sum(r["predicted"] == c for r, c in zip(rows, frame["label"]))


def test_a_failed_run_leaves_the_previous_output_and_no_partial_file(saved, tmp_path, monkeypatch):
    dataset, models, _ = saved
    out = tmp_path / "p.csv"
    out.write_text("the previous output\n")
    real, calls = predict_module.predict_batch, []

    def failing_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-run")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_batch", failing_second_batch)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        predict_manifest(models / "best", dataset / "manifest.csv", out, 5, CPU)
    assert out.read_text() == "the previous output\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]


def test_bad_cells_become_errors_of_their_rows_only(saved, tmp_path):
    dataset, models, _ = saved
    (dataset / "img" / "corrupt.png").write_bytes(b"not a png at all")
    (tmp_path / "outside.wav").write_bytes((dataset / "wav" / "0.wav").read_bytes())  # exists, but outside
    cells = [  # sample_id, image, audio, text; no label column
        ("ok", "img/1.png", "wav/1.wav", "blue sky above"),
        ("no-image", "", "wav/2.wav", "green grass"),
        ("missing-file", "img/nope.png", "", "red apples"),
        ("corrupt", "img/corrupt.png", "wav/3.wav", ""),
        ("unsafe", "img/1.png", "../outside.wav", ""),
        ("nothing-left", "img/corrupt.png", "../../etc/passwd", ""),
        ("empty", "", "", ""),
    ]
    manifest = dataset / "new.csv"
    pd.DataFrame(cells, columns=["sample_id", "image", "audio", "text"]).to_csv(manifest, index=False)
    summary = predict_manifest(models / "best", manifest, tmp_path / "p.csv", 3, CPU)

    rows = read_rows(tmp_path / "p.csv")
    assert list(rows[0]) == output_columns(LABELS, MODALITIES)
    assert by_contrib(rows[0]) and all(by_contrib(r)["text"] == "" for r in rows if r["sample_id"] == "corrupt")
    assert [r["sample_id"] for r in rows] == [c[0] for c in cells]
    by_id = {r["sample_id"]: r for r in rows}
    assert by_id["ok"]["error"] == by_id["no-image"]["error"] == ""
    assert by_id["no-image"]["modalities_used"] == "audio+text"
    assert by_id["missing-file"]["modalities_used"] == "text"
    assert by_id["missing-file"]["error"].startswith("image 'img/nope.png': FileNotFoundError")
    assert by_id["corrupt"]["modalities_used"] == "audio"
    assert by_id["corrupt"]["error"].startswith("image 'img/corrupt.png': UnidentifiedImageError")
    assert by_id["unsafe"]["modalities_used"] == "image"
    assert "audio '../outside.wav': ManifestError" in by_id["unsafe"]["error"] and "escapes" in by_id["unsafe"]["error"]
    for name in ("nothing-left", "empty"):
        assert by_id[name]["predicted"] == by_id[name]["modalities_used"] == ""
        assert all(by_id[name][f"p_{c}"] == "" for c in LABELS)
        assert by_id[name]["error"].endswith("no modality left to predict from")
    assert "image 'img/corrupt.png'" in by_id["nothing-left"]["error"]
    assert "audio '../../etc/passwd'" in by_id["nothing-left"]["error"]
    for r in rows:
        if r["predicted"]:
            p = [float(r[f"p_{c}"]) for c in LABELS]
            assert sum(p) == pytest.approx(1.0, abs=1e-5) and r["predicted"] == LABELS[int(np.argmax(p))]
    assert (summary.rows, summary.predicted, summary.with_errors, summary.labelled) == (7, 5, 5, 0)


def by_contrib(row: dict[str, str]) -> dict[str, str]:
    return {m: row[f"contrib_{m}"] for m in MODALITIES if f"contrib_{m}" in row}


def test_predict_applies_the_temperature_tune_fits_and_each_contribution_is_a_pass_without_that_modality(
        saved, tmp_path):
    dataset, models, aligned = saved
    folder = tmp_path / "best"
    shutil.copytree(models / "best", folder)
    frame = read_manifest(dataset / "manifest.csv").assign(split="test")
    test = load_split(frame, "test", LABELS, dataset.parent / "pre", MODALITIES)
    # As tune does: fitted on the "val" rows (the fixture's test rows stand in for every split), saved beside it.
    record = calibrate_saved(folder, test, aligned, 4, CPU)
    assert record["temperature"] == load_temperature(folder) != 1.0
    assert record["val_nll_after"] < record["val_nll_before"]
    predict_manifest(folder, dataset / "manifest.csv", tmp_path / "p.csv", 5, CPU)
    rows = read_rows(tmp_path / "p.csv")

    cached, spec = load_model(folder)
    data = inputs_for(spec, test, aligned)
    temperature = record["temperature"]
    expected = predict(cached, data, 4, CPU, temperature=temperature)
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in LABELS] for r in rows])
    assert torch.allclose(probs, expected, atol=1e-5)
    assert not torch.allclose(probs, predict(cached, data, 4, CPU), atol=1e-3)  # T moved the probabilities
    chosen = expected.argmax(dim=1)
    for modality in MODALITIES:  # an independent pass over every row with that modality's mask off
        off = SplitData(data.sample_ids, data.labels, data.inputs,
                        {m: torch.zeros_like(v) if m == modality else v for m, v in data.masks.items()})
        without = predict(cached, off, 4, CPU, temperature=temperature).gather(1, chosen[:, None]).squeeze(1)
        for i, row in enumerate(rows):
            if test.masks[modality][i]:
                assert float(row[f"contrib_{modality}"]) == pytest.approx(float(expected[i, chosen[i]] - without[i]),
                                                                          abs=1e-5)
            else:
                assert row[f"contrib_{modality}"] == ""  # absent: no contribution measured
    assert any(float(r["contrib_image"]) != 0 for r in rows if r["contrib_image"])
    predict_manifest(folder, dataset / "manifest.csv", tmp_path / "q.csv", 5, CPU, contributions=False)
    assert list(read_rows(tmp_path / "q.csv")[0]) == output_columns(LABELS)


def test_the_command_prints_accuracy_and_refuses_extra_columns(saved, tmp_path, capsys):
    dataset, models, _ = saved
    main(["--model", str(models / "best"), "--manifest", str(dataset / "manifest.csv"),
          "--out", str(tmp_path / "p.csv"), "--batch-size", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "12 rows" in out and "accuracy on the 12 labelled rows with a prediction:" in out
    extra = dataset / "extra.csv"
    pd.DataFrame({"sample_id": ["a"], "text": ["hi"], "colour": ["red"]}).to_csv(extra, index=False)
    with pytest.raises(SystemExit, match=r"unknown column\(s\) \['colour'\]"):
        main(["--model", str(models / "best"), "--manifest", str(extra), "--out", str(tmp_path / "q.csv")])
    assert not (tmp_path / "q.csv").exists()


def test_a_model_saved_without_its_inputs_names_the_fix(saved, tmp_path):
    _, models, _ = saved
    model, spec = load_model(models / "best")
    save_model(model, spec, tmp_path / "old")
    with pytest.raises(FileNotFoundError, match=r"inputs\.json is missing.*re-run `dvc repro`"):
        load_for_raw_inputs(tmp_path / "old")


def test_a_frozen_strategy_model_gets_every_aligned_encoder_back(saved, tmp_path):
    dataset, _, aligned = saved
    model, spec = initial_model(aligned, LABELS, MODALITIES, train_config(strategy="frozen", input_norm=NORM))
    torch.nn.init.normal_(model.head.weight)
    save_model(model, spec, tmp_path / "models" / "best")
    bundle_inputs(aligned, tmp_path / "models" / "best")
    assert sorted(p.name for p in (tmp_path / "models" / "best" / "encoders").iterdir()) == [
        "audio.safetensors", "image.safetensors", "text.safetensors"]
    predict_manifest(tmp_path / "models" / "best", dataset / "manifest.csv", tmp_path / "p.csv", 5, CPU)
    frame = read_manifest(dataset / "manifest.csv").assign(split="test")
    test = load_split(frame, "test", LABELS, dataset.parent / "pre", MODALITIES)
    expected = predict(model, inputs_for(spec, test, aligned), 4, CPU)
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in LABELS] for r in read_rows(tmp_path / "p.csv")])
    assert torch.allclose(probs, expected, atol=1e-5)


def test_an_ensemble_predicts_the_weighted_average_of_its_members(saved, tmp_path):
    """`predict --model <ensemble folder>`: the members' probabilities averaged with the saved weights; on a row
    without audio the audio model drops out (the fused model's probabilities alone). A classical member is run from
    its saved folder; one without a folder (an old ensemble.json) is refused with the way out."""
    dataset, models, aligned = saved
    _, spec = load_model(models / "best")
    torch.manual_seed(1)
    audio_spec = spec.restricted(["audio"])
    model, _ = initial_model(aligned, LABELS, ["audio"], train_config(strategy="full", input_norm=NORM))
    torch.nn.init.normal_(model.head.weight)
    save_model(model, audio_spec, tmp_path / "models" / "unimodal" / "audio")
    bundle_inputs(aligned, tmp_path / "models" / "unimodal" / "audio")
    shutil.copytree(models / "best", tmp_path / "models" / "best")
    folder = tmp_path / "ensemble"
    members = [Member("fused", "model", 0.25, 1, MODALITIES, "../models/best"),
               Member("unimodal_audio", "model", 0.75, 3, ["audio"], "../models/unimodal/audio")]
    EnsembleSpec("log_likelihood", 4, LABELS, members, "fused", "ensemble").save(folder)

    predict_manifest(folder, dataset / "manifest.csv", tmp_path / "p.csv", 5, CPU)
    rows = read_rows(tmp_path / "p.csv")
    frame = read_manifest(dataset / "manifest.csv").assign(split="test")
    test = load_split(frame, "test", LABELS, dataset.parent / "pre", MODALITIES)
    scored = reader_probabilities(load_readers(tmp_path / "models", test, aligned, CPU), 4, CPU)
    expected = combine([scored[FUSED], scored["unimodal_audio"]], [0.25, 0.75])
    probs = np.array([[float(r[f"p_{c}"]) for c in LABELS] for r in rows])
    assert np.allclose(probs, expected, atol=1e-5)
    no_audio = ~test.masks["audio"].numpy()
    assert no_audio.any() and np.allclose(probs[no_audio], scored[FUSED][no_audio], atol=1e-5)

    # A classical member, by its folder as the baseline stage saves it: its features from the same processor outputs.
    baselines = tmp_path / "data" / "baseline" / "models"
    classical = fitted_baseline(test, baselines / "baseline_early_fusion")
    members.append(Member("baseline_early_fusion", "classical", 0.5, 2, MODALITIES,
                          "../data/baseline/models/baseline_early_fusion"))
    EnsembleSpec("log_likelihood", 4, LABELS, members, "fused", "ensemble").save(folder)
    predict_manifest(folder, dataset / "manifest.csv", tmp_path / "q.csv", 5, CPU)
    with_classical = np.array([[float(r[f"p_{c}"]) for c in LABELS] for r in read_rows(tmp_path / "q.csv")])
    expected = combine([scored[FUSED], scored["unimodal_audio"], classical], [0.25, 0.75, 0.5])
    assert np.allclose(with_classical, expected, atol=1e-5) and not np.allclose(with_classical, probs, atol=1e-3)
    members[-1].path = None  # an ensemble.json written before the baselines were saved as models
    EnsembleSpec("log_likelihood", 4, LABELS, members, "fused", "ensemble").save(folder)
    with pytest.raises(ValueError, match="members \\['baseline_early_fusion'\\] without a model folder.*"
                                         "dvc repro baseline ensemble.*single best model \\(fused\\)"):
        predict_manifest(folder, dataset / "manifest.csv", tmp_path / "r.csv", 5, CPU)


def fitted_baseline(data: SplitData, folder: Path) -> np.ndarray:
    """The early-fused classical baseline fitted on `data` (standing in for every split) and saved in `folder`, as
    the baseline stage does; its probabilities on `data`."""
    cfg = Baseline(c_grid=[1.0], max_iter=200, image_size=4, n_mfcc=4, max_tokens=20)
    model = fit_baselines({s: data for s in SPLITS}, cfg, seed=0, labels=LABELS).models["early_fusion"]
    model.save(folder, TINY_SPECS)
    return model.predict_proba(data.inputs, {m: data.masks[m].numpy() for m in MODALITIES})


def test_a_classical_baseline_predicts_from_the_raw_files(saved, tmp_path):
    """`predict --model data/baseline/models/baseline_early_fusion`: the saved model's probabilities from the
    manifest's files, processed with the settings (and tokenizer) saved beside it."""
    dataset, _, _ = saved
    frame = read_manifest(dataset / "manifest.csv").assign(split="test")
    test = load_split(frame, "test", LABELS, dataset.parent / "pre", MODALITIES)
    expected = fitted_baseline(test, tmp_path / "baseline_early_fusion")
    assert (tmp_path / "baseline_early_fusion" / "processors" / "text").is_dir()  # the tokenizer travels with it
    main(["--model", str(tmp_path / "baseline_early_fusion"), "--manifest", str(dataset / "manifest.csv"),
          "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    rows = read_rows(tmp_path / "p.csv")
    probs = np.array([[float(r[f"p_{c}"]) for c in LABELS] for r in rows])
    assert np.allclose(probs, expected, atol=1e-5)
    assert [r["predicted"] for r in rows] == [LABELS[i] for i in expected.argmax(axis=1)]

"""Stage `evaluate`: test metrics of the fused model vs unimodal and classical baselines, each on the rows it sees;
per-class scores, calibration, robustness to missing and corrupted modalities, and an efficiency report.

`metrics/evaluate.json` holds what is deterministic and compared across runs; the tables and plots go under
`<base.paths.plots>/evaluate/` (`multimodal.evaluation.plots`), the confusion matrix through DVCLive.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from multimodal.data.manifest import read_manifest
from multimodal.evaluation.baseline import (
    EARLY_FUSION,
    PREDICTIONS,
    PREFIX,
    PROBABILITIES,
    read_predictions,
    read_probabilities,
)
from multimodal.evaluation.calibration import reliability
from multimodal.evaluation.efficiency import efficiency_report
from multimodal.evaluation.evaluate import (
    ENSEMBLE,
    FUSED,
    ModelOnTestSplit,
    ensemble_headline,
    fair_report,
    load_readers,
    reader_logits,
    softmax,
    warn_if_baseline_wins,
    with_details,
)
from multimodal.evaluation.explanations import explain_rows, pick_rows, write_explanations
from multimodal.evaluation.members import TRIALS, deep_members, deep_probabilities
from multimodal.evaluation.params import Evaluate
from multimodal.evaluation.plots import CALIBRATED, EXPLANATIONS, write_efficiency, write_tables
from multimodal.evaluation.robustness import Pooled, check_corruptions, corruption_curves, missing_modality
from multimodal.evaluation.scoring import ABSTAIN, per_class_scores, top_label
from multimodal.modalities.params import LISTED
from multimodal.models.bundle import load_encoders
from multimodal.models.ensemble import EnsembleSpec, ensemble_probabilities
from multimodal.pipeline.metrics_files import HEADLINE, headline_of
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline, pick_device, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.dataset import SplitData, load_split
from multimodal.storage.io import atomic_file, write_json
from multimodal.training.load_data import load_labels

logger = logging.getLogger(__name__)

PARAMS = Schema({"base": Base, "evaluate": Evaluate}) | LISTED

CONFUSION = Path("plots/sklearn/confusion_matrix.json")  # where DVCLive puts it, under evaluate's plots folder


def single_modality_val_accuracy(ensemble: EnsembleSpec) -> dict[str, float]:
    """Validation accuracy, on the rows each sees, of every single-modality model (deep `unimodal_<m>`, classical
    `baseline_<m>`), as the ensemble stage measured it: what picks the best single-modality model."""
    return {name: figures["accuracy"] for name, figures in ensemble.validation["members"].items()
            if name.startswith("unimodal_") or (name.startswith(PREFIX) and name != PREFIX + EARLY_FUSION)}


def with_ensemble(probs: dict[str, np.ndarray], ensemble: EnsembleSpec, ensemble_dir: Path, models_dir: Path,
                  test: SplitData, aligned: Path, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """The ensemble's test probabilities, from its members' (loading those not scored yet: the other top-k trials'
    models), and the single best's when it is such a trial (validation can prefer another trial to the fused best
    by the ensemble's metric), at its temperature: {ENSEMBLE: ..., single best: ...} or {ENSEMBLE: ...}."""
    extra = {m.name: ensemble_dir / m.path for m in ensemble.members if m.name not in probs and m.kind == "model"}
    if ensemble.single_best not in probs and ensemble.single_best not in extra:
        extra[ensemble.single_best] = deep_members(models_dir, [TRIALS])[ensemble.single_best]
    member_probs = {**probs, **deep_probabilities(extra, test, "test", aligned, batch_size, device)[0]}
    out = {ENSEMBLE: ensemble_probabilities(ensemble, member_probs)}
    if ensemble.single_best not in probs:
        out[ensemble.single_best] = member_probs[ensemble.single_best]
    return out


def load_test(params: StageParams) -> SplitData:
    """The test split as the processors wrote it, every modality: each model swaps in the cached features it
    reads, and corruptions need the processor outputs of those too."""
    paths = params.base.paths
    frame = read_manifest(Path(paths.validated) / "manifest.csv")
    return load_split(frame, "test", load_labels(params), Path(paths.preprocessed), params.preprocess.modalities)


def explain(fused: ModelOnTestSplit, test: SplitData, y: np.ndarray, pred: np.ndarray, params: StageParams,
            device: torch.device) -> tuple[list[dict], dict]:
    """`evaluate.explain.rows` test rows of the fused model (half right, half wrong, seeded), with their manifest
    cells (`multimodal.evaluation.explanations`)."""
    cfg = params.evaluate.explain
    complete = torch.stack([test.masks[m] for m in fused.spec.modalities]).all(dim=0).numpy()
    rows = pick_rows(y, pred, complete, cfg.rows, params.base.seed)
    frame = read_manifest(Path(params.base.paths.validated) / "manifest.csv").set_index("sample_id")
    cells = {m: frame.loc[test.sample_ids, m].fillna("").astype(str).tolist() for m in fused.spec.modalities
             if m in frame}
    return explain_rows(fused, rows, y, fused.spec.labels, cells, cfg.steps, device)


def evaluate(params: StageParams) -> dict:
    from dvclive import Live

    paths, cfg, seed = params.base.paths, params.evaluate, params.base.seed
    device, aligned, out_dir = pick_device(params.base.device), Path(paths.aligned), Path(paths.plots) / "evaluate"
    # 1. The saved models, each with the test split in the form it reads.
    test = load_test(params)
    readers = load_readers(Path(paths.models), test, aligned, device)
    spec = readers[FUSED].spec
    check_corruptions(cfg.corruptions, spec.modalities)
    # 2. Class probabilities of every model, as trained and at its validation-fitted temperature (the same argmax);
    # the baseline's decisions are LogisticRegression.predict's own.
    logits = reader_logits(readers, cfg.batch_size, device)
    probs = {name: softmax(z) for name, (z, _) in logits.items()}
    calibrated = {name: softmax(z, temperature) for name, (z, temperature) in logits.items()}
    probs.update(read_probabilities(Path(paths.baseline) / PROBABILITIES, test.sample_ids, spec.labels))
    ensemble = EnsembleSpec.load(Path(paths.ensemble))
    # The ensemble averages its deep members at their temperatures, as it was selected (and as `predict` runs it).
    probs.update(with_ensemble({**probs, **calibrated}, ensemble, Path(paths.ensemble), Path(paths.models), test,
                               aligned, cfg.batch_size, device))
    preds = {name: top_label(p) for name, p in probs.items()}
    preds.update(read_predictions(Path(paths.baseline) / PREDICTIONS, test.sample_ids, spec.labels))
    y = test.labels.numpy()
    # 3. Scores on the rows each model sees: accuracy with intervals, calibration, per class.
    val_accuracy = single_modality_val_accuracy(ensemble)
    report = {"fusion": spec.fusion, **fair_report(y, preds, val_accuracy, cfg.bootstrap, seed)}
    report = ensemble_headline(report, y, preds, ensemble.single_best, ensemble.default, cfg.bootstrap, seed)
    calibration = {name: reliability(y, preds[name], probs[name], cfg.calibration_bins) for name in preds
                   if name in probs}
    after = {name: {**reliability(y, preds[name], p, cfg.calibration_bins), "temperature": logits[name][1]}
             for name, p in calibrated.items()}
    per_class = {name: per_class_scores(y, pred, spec.labels) for name, pred in preds.items()}
    # 4. Robustness: modalities removed; inputs corrupted (re-encoded where a model reads cached features).
    pooled = {name: Pooled(reader, preds[name], cfg.batch_size, device) for name, reader in readers.items()}
    missing = missing_modality(pooled[FUSED], y, cfg.batch_size, device, cfg.bootstrap, seed)
    cached = {m for reader in readers.values() for m in reader.spec.feature_modalities}
    encoders = load_encoders(aligned, sorted(cached))  # the ones align ran, saved beside their features
    curves, skipped = corruption_curves(pooled, test, y, cfg.corruptions, encoders, cfg.batch_size, device, seed)
    report = with_details(report, calibration, missing, skipped, after)
    write_json(Path(paths.metrics) / "evaluate.json", report, sort_keys=False)
    write_json(Path(paths.metrics) / HEADLINE, headline_of(report), sort_keys=False)  # the DVC metric
    write_tables(out_dir, per_class, {**calibration, **{f"{name}{CALIBRATED}": r for name, r in after.items()}},
                 missing, curves)
    # 5. Why: a few test rows, picked by a seeded rule, with contributions and attribution maps for the report.
    write_explanations(out_dir / EXPLANATIONS, *explain(readers[FUSED], test, y, preds[FUSED], params, device))
    # 6. Efficiency, a report (timings vary run to run): CPU always, CUDA too when present.
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    write_efficiency(out_dir, efficiency_report({name: (r.model, r.spec) for name, r in readers.items()}, encoders,
                                                test, cfg.efficiency, devices))
    # 7. The confusion matrix. dvcyaml=False: DVCLive must not rewrite our dvc.yaml; the plot is declared there.
    seen = preds[FUSED] != ABSTAIN
    # DVCLive writes into a scratch folder; the one file it makes is then moved into place atomically.
    with tempfile.TemporaryDirectory(prefix=".live-", dir=out_dir.parent) as scratch:
        with Live(dir=scratch, dvcyaml=False, save_dvc_exp=False, report=None) as live:
            live.log_sklearn_plot("confusion_matrix", [spec.labels[i] for i in y[seen]],
                                  [spec.labels[i] for i in preds[FUSED][seen]], name="confusion_matrix.json")
        with atomic_file(out_dir / CONFUSION) as tmp:
            shutil.copyfile(Path(scratch) / CONFUSION, tmp)
    logger.info("fused test accuracy %.4f [%.4f, %.4f] on %d rows, ECE %.4f (%.4f at T = %.3f); fused minus best "
                "unimodal (%s, chosen on val): %s [%s, %s]; without %s", report["fused_accuracy"], report["fused_accuracy_ci95_lo"],
                report["fused_accuracy_ci95_hi"], report["fused_accuracy_n"], report["fused_ece"],
                report["fused_ece_calibrated"], report["fused_temperature"],
                report["best_unimodal"], report.get("fused_minus_best_unimodal"),
                report.get("fused_minus_best_unimodal_ci95_lo"), report.get("fused_minus_best_unimodal_ci95_hi"),
                report["fused_accuracy_without"])
    logger.info("ensemble test accuracy %s [%s, %s]; minus the single best (%s, chosen on val): %s [%s, %s]; "
                "default model: %s", report["ensemble_accuracy"], report["ensemble_accuracy_ci95_lo"],
                report["ensemble_accuracy_ci95_hi"], report["single_best"], report["ensemble_minus_single_best"],
                report["ensemble_minus_single_best_ci95_lo"], report["ensemble_minus_single_best_ci95_hi"],
                report["default_model"])
    warn_if_baseline_wins(report)
    return report


def main() -> None:
    setup_logging()
    params = load_params(stage="evaluate", schema=PARAMS)
    go_offline()  # models and align's encoders are rebuilt from their saved configs and weights
    evaluate(params)


if __name__ == "__main__":
    main()

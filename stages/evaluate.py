"""Stage `evaluate`: test metrics of the fused model vs unimodal and classical baselines, each on the rows it sees.

The confusion matrix goes through DVCLive.
"""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal.baseline import PREDICTIONS, read_predictions
from multimodal.config import Params, load_params
from multimodal.evaluate import FUSED, deep_predictions, fair_report, warn_if_baseline_wins
from multimodal.io import atomic_dir, read_json, write_json
from multimodal.runtime import go_offline, pick_device, setup_logging
from multimodal.scoring import ABSTAIN
from multimodal.splits import load_splits

logger = logging.getLogger(__name__)


def unimodal_val_accuracy(tune_metrics: dict) -> dict[str, float]:
    """`unimodal/<m>/val_accuracy` of tune.json as {m: accuracy}: what picks the best unimodal model."""
    return {key.split("/")[1]: value for key, value in tune_metrics.items()
            if key.startswith("unimodal/") and key.endswith("/val_accuracy")}


def evaluate(params: Params) -> dict:
    from dvclive import Live

    paths = params.base.paths
    test = load_splits(params, ("test",))["test"]  # each model then swaps in the cached features it reads
    preds, spec = deep_predictions(Path(paths.models), test, params.evaluate.batch_size,
                                   pick_device(params.base.device), Path(paths.aligned))
    preds.update(read_predictions(Path(paths.baseline) / PREDICTIONS, test.sample_ids, spec.labels))
    y = test.labels.numpy()
    val_accuracy = unimodal_val_accuracy(read_json(Path(paths.metrics) / "tune.json"))
    report = {"fusion": spec.fusion, **fair_report(y, preds, val_accuracy, params.evaluate.bootstrap,
                                                     params.base.seed)}
    write_json(Path(paths.metrics) / "evaluate.json", report, sort_keys=False)
    # dvcyaml=False: DVCLive must not rewrite our dvc.yaml; the plot is declared there instead.
    seen = preds[FUSED] != ABSTAIN
    with (atomic_dir(Path(paths.plots) / "evaluate") as tmp,
          Live(dir=str(tmp), dvcyaml=False, save_dvc_exp=False, report=None) as live):
        live.log_sklearn_plot("confusion_matrix", [spec.labels[i] for i in y[seen]],
                              [spec.labels[i] for i in preds[FUSED][seen]], name="confusion_matrix.json")
    logger.info("fused test accuracy %.4f [%.4f, %.4f] on %d rows; fused minus best unimodal (%s, chosen on val): "
                "%s [%s, %s]", report["fused_accuracy"], report["fused_accuracy_ci95_lo"],
                report["fused_accuracy_ci95_hi"], report["fused_accuracy_n"], report["best_unimodal"],
                report.get("fused_minus_best_unimodal"), report.get("fused_minus_best_unimodal_ci95_lo"),
                report.get("fused_minus_best_unimodal_ci95_hi"))
    warn_if_baseline_wins(report)
    return report


def main() -> None:
    setup_logging()
    params = load_params(stage="evaluate")
    go_offline()  # models are rebuilt from their saved configs: no hub access
    evaluate(params)


if __name__ == "__main__":
    main()

"""Stage `evaluate`: test metrics of the fused model vs unimodal baselines; confusion matrix via DVCLive."""

from __future__ import annotations

import logging
from pathlib import Path

from multimodal.config import Params, load_params
from multimodal.evaluate import evaluate_models
from multimodal.io import write_json
from multimodal.runtime import go_offline, pick_device, setup_logging
from multimodal.splits import load_splits

logger = logging.getLogger(__name__)


def evaluate(params: Params) -> dict:
    from dvclive import Live

    paths = params.base.paths
    test = load_splits(params, ("test",))["test"]  # each model then swaps in the cached features it reads
    metrics, y_true, y_pred, labels = evaluate_models(
        Path(paths.models), test, params.evaluate.batch_size, pick_device(params.base.device), Path(paths.aligned)
    )
    write_json(Path(paths.metrics) / "evaluate.json", metrics)
    # dvcyaml=False: DVCLive must not rewrite our dvc.yaml; the plot is declared there instead.
    with Live(dir=str(Path(paths.plots) / "evaluate"), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        live.log_sklearn_plot("confusion_matrix", [labels[i] for i in y_true], [labels[i] for i in y_pred],
                              name="confusion_matrix.json")
    logger.info("test metrics: %s", metrics)
    return metrics


def main() -> None:
    setup_logging()
    params = load_params(stage="evaluate")
    go_offline()  # models are rebuilt from their saved configs: no hub access
    evaluate(params)


if __name__ == "__main__":
    main()

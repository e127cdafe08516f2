"""Stage `report`: one self-contained HTML file (`base.paths.report`) with the run's params, validation summary,
metrics with intervals, plots and a model card. Open it in any browser; it loads nothing from anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic_core import to_jsonable_python

from multimodal.data.params import INGEST, VALIDATE
from multimodal.evaluation.params import Baseline, Evaluate
from multimodal.modalities.params import MODALITIES
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import setup_logging
from multimodal.pipeline.stage_params import StageParams, declared_params
from multimodal.preprocessing.params import Preprocess
from multimodal.reporting.params import Report
from multimodal.reporting.report import ReportInputs, build_report
from multimodal.storage.io import write_text_atomic
from multimodal.training.params import Align
from multimodal.tuning.params import TUNE

logger = logging.getLogger(__name__)

# Every section the report shows; each package's schema of it (the tune one brings its rules across keys).
PARAMS = (Schema({"base": Base, "preprocess": Preprocess, "align": Align, "baseline": Baseline, "evaluate": Evaluate,
                  "report": Report}) | INGEST | VALIDATE | MODALITIES | TUNE)


def shown_params(params: StageParams, keys: tuple[str, ...]) -> dict[str, Any]:
    """The params under `keys` (dotted, as dvc.yaml lists them) as plain data, keyed as params.yaml names them."""
    out = {}
    for key in keys:
        node: Any = params
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        out[key] = to_jsonable_python(node, by_alias=True)
    return out


def report(params: StageParams) -> str:
    paths = params.base.paths
    # The report shows exactly the params its dvc.yaml entry declares: DVC re-renders it when any of them changes.
    keys = tuple(k for k in declared_params("report") if k != "report")
    run = ReportInputs(
        validated=paths.validated, metrics=paths.metrics, plots=paths.plots,
        best_config=paths.models / "best" / "best_config.yaml", params=shown_params(params, keys),
        title=params.report.title, intended_use=params.report.intended_use, limitations=params.report.limitations,
        max_rows=params.report.max_rows, dataset=str(params.ingest.dataset), selection=params.tune.metric,
        selection_mode=params.tune.mode, resamples=params.evaluate.bootstrap,
    )
    html = build_report(run)
    write_text_atomic(paths.report, html)
    logger.info("wrote %s (%.0f KB): open it in a browser", paths.report, len(html.encode()) / 1024)
    return html


def main() -> None:
    setup_logging()
    report(load_params(stage="report", schema=PARAMS))


if __name__ == "__main__":
    main()

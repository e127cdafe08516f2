"""Stage `report`: one self-contained HTML file (`base.paths.report`) with the run's params, validation summary,
metrics with intervals, plots and a model card. Open it in any browser; it loads nothing from anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from multimodal.config import Params, load_params
from multimodal.io import write_text_atomic
from multimodal.report import ReportInputs, build_report
from multimodal.runtime import setup_logging
from multimodal.stage_params import declared_params

logger = logging.getLogger(__name__)


def shown_params(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The params under `keys` (dotted, as dvc.yaml lists them) as plain data, keyed as params.yaml names them."""
    data = params.model_dump(by_alias=True, mode="json")
    out = {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def report(params: Params) -> str:
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
    report(load_params(stage="report"))


if __name__ == "__main__":
    main()

"""Two report sections drawn from what evaluate wrote (nothing computed here): calibration before and after the
temperature tune fitted on validation, and why the fused model predicted what it did on a few test rows.
"""

from __future__ import annotations

from typing import Any

from multimodal.reporting.figures import explanation_chart, reliability_chart
from multimodal.reporting.model_card import FUSED, pct
from multimodal.reporting.template import Figure, Heading, Section, Table, Text

# Each section takes the report's `RunFiles` and `ReportInputs` (multimodal.reporting.report, which lists them in
# its SECTIONS: typed `Any` here, or the two modules would import each other).

# Where evaluate writes them (multimodal.evaluation.plots, multimodal.evaluation.explanations).
RELIABILITY, CALIBRATED, EXPLANATIONS, ROWS, MAPS = ("reliability", "_calibrated", "explanations", "rows.json",
                                                     "maps.safetensors")


def calibration(files: Any, run: Any) -> Section | None:
    """ECE on test as trained and at each model's temperature, and the fused model's reliability diagram."""
    evaluate = files.json(run.metrics / "evaluate.json") or {}
    models = {n: s for n, s in evaluate.get("models", {}).items() if "ece_calibrated" in s}
    if not models:
        return None
    rows = [[name, s.get("temperature"), s.get("ece"), s.get("ece_calibrated"), s.get("n")] for name, s in models.items()]
    blocks: list = [Text("Temperature scaling: one scalar T per saved model, fitted on the validation rows by "
                         "minimising the negative log-likelihood of softmax(logits / T); it never changes a "
                         "prediction, only how sure it claims to be. predict applies it.", "muted"),
                    Table(["model", "temperature", "ECE as trained", "ECE calibrated", "n"], rows,
                          caption="Expected calibration error on the test split (0 is perfect)")]
    folder = run.plots / "evaluate" / RELIABILITY
    curves = []
    for label, name in (("as trained", FUSED), (f"T = {models.get(FUSED, {}).get('temperature', 1):.3g}",
                                                 FUSED + CALIBRATED)):
        path = folder / f"{name}.csv"
        if path.is_file():
            bins = files.csv(path)
            curves.append((label, [b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                           [b["count"] for b in bins]))
    if curves:
        blocks.append(Figure(reliability_chart(curves), "reliability diagram of the fused model",
                             "The fused model's reliability on test, before and after temperature scaling: below "
                             "the diagonal it is overconfident."))
    return Section("calibration", "Calibration", blocks)


def _cells_text(record: dict[str, Any]) -> str:
    shown = set(record.get("maps", {}))
    return "; ".join(f"{m}: {cell}" for m, cell in record.get("cells", {}).items() if cell and m not in shown) or ""


def why(files: Any, run: Any) -> Section | None:
    """The rows evaluate explained: inputs, prediction, each modality's contribution, attribution maps."""
    folder = run.plots / "evaluate" / EXPLANATIONS
    records = files.json(folder / ROWS)
    if not records:
        return None
    from safetensors.numpy import load_file  # the arrays evaluate saved; no torch needed to draw them

    arrays = load_file(str(folder / MAPS)) if (folder / MAPS).is_file() else {}
    files.used.add((folder / MAPS).resolve())
    blocks: list = [Text("Test rows picked by a rule seeded from base.seed, half predicted right and half wrong. "
                         "A modality's contribution is the predicted class's probability minus that probability "
                         "with the modality removed (its mask off). Attribution maps: Integrated Gradients of the "
                         "predicted class's probability from a reference input (0 after the model's input "
                         "normalisation); red pixels pushed towards the prediction, blue away.", "muted")]
    for record in records:
        verdict = "right" if record["correct"] else "WRONG"
        blocks.append(Heading(f"{record['sample_id']}: {record['label']} predicted as {record['predicted']} "
                              f"({pct(record['probability'])}, {verdict})"))
        maps = [(m, arrays[v["input"]], arrays[v["attribution"]], v.get("layout", "picture"))
                for m, v in record.get("maps", {}).items() if v["input"] in arrays]
        checks = "; ".join(f"{m}: attributions sum to {v['completeness'][0]:+.3f}, f(x) - f(reference) = "
                           f"{v['completeness'][1]:+.3f}" for m, v in record.get("maps", {}).items())
        text = _cells_text(record)
        blocks.append(Figure(explanation_chart(maps, record.get("contributions", {})),
                             f"explanation of {record['sample_id']}",
                             " ".join(part for part in (text and f"Other inputs: {text}.",
                                                        checks and f"Completeness: {checks}.") if part)))
    return Section("why", "Why these predictions", blocks)

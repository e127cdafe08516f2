"""The offline report: one self-contained HTML file with a run's params, validation, metrics, plots and model card.

Sections are built by small functions from the run's files (`RunFiles` remembers which file each one rendered);
the last sections render, generically, every file under the metrics and plots folders that no earlier section
used, so a figure another stage starts writing appears without a change here (a dedicated section can follow).
To add a section: write a function `(RunFiles, ReportInputs) -> Section | None` and list it in `SECTIONS`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from multimodal.data.manifest import MANIFEST_NAME, read_manifest
from multimodal.reporting import explained
from multimodal.reporting.figures import IMAGE_TYPES, confusion_chart, front_chart, image_uri, interval_chart
from multimodal.reporting.model_card import FUSED, headline, interval, model_card, model_kind, pct, pts
from multimodal.reporting.template import Bullets, Code, Facts, Figure, Heading, Section, Table, Text, render_page
from multimodal.storage.io import read_json

log = logging.getLogger(__name__)

# evaluate.json keys the metrics section shows itself; any other key is rendered generically.
# `claims`: their sentences open the summary (model_card.headline).
_EVALUATE_SHOWN = {"models", "paired", "all_rows_abstain_wrong", "fusion", "claims"}


@dataclass(frozen=True)
class ReportInputs:
    """Where the run's files are and what `params.yaml` says about the report."""

    validated: Path
    metrics: Path
    plots: Path
    best_config: Path
    params: Mapping[str, Any]  # the params sections shown (those `dvc.yaml` declares for the report stage)
    title: str
    intended_use: str
    limitations: Sequence[str]
    max_rows: int
    dataset: str  # ingest.dataset
    selection: str  # tune.metric: what chose the model
    selection_mode: str  # tune.mode: max | min
    resamples: int  # evaluate.bootstrap


@dataclass
class RunFiles:
    """Reads the run's files, remembering which ones a section used."""

    used: set[Path] = field(default_factory=set)

    def json(self, path: Path) -> Any:
        if not path.is_file():
            return None
        self.used.add(path.resolve())
        return read_json(path)

    def yaml(self, path: Path) -> Any:
        if not path.is_file():
            return None
        self.used.add(path.resolve())
        return yaml.safe_load(path.read_text(encoding="utf-8"))

    def csv(self, path: Path) -> list[dict[str, Any]]:
        """Rows of a CSV file, numbers as numbers."""
        self.used.add(path.resolve())
        with path.open(newline="", encoding="utf-8") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def unused(self, folder: Path, suffixes: set[str]) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                      and p.resolve() not in self.used) if folder.is_dir() else []


# --------------------------------------------------------------------------------------------- generic tables


def _number(text: str | None) -> Any:
    """A CSV cell as int or float where it reads as one (ids with leading zeros stay text), else as is."""
    if text is None or text == "" or (len(text) > 1 and text[0] == "0" and text[1].isdigit()):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _scalar(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) <= 4 and all(_scalar(v) and not isinstance(v, (list, tuple)) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def records_table(records: Sequence[Mapping[str, Any]], caption: str, max_rows: int,
                  first: Sequence[str] = ()) -> Table:
    """One row per record; the `first` columns lead, the others follow in the order they appear."""
    present = [c for c in first if any(c in r for r in records)]
    columns = list(dict.fromkeys([*present, *(k for r in records for k in r)]))
    rows = [[r.get(c) for c in columns] for r in records[:max_rows]]
    return Table(columns, rows, caption, more=max(0, len(records) - max_rows))


def json_tables(obj: Any, caption: str, max_rows: int) -> list[Table]:
    """Any JSON as tables: scalars as key/value rows, a dict of flat dicts or a list of records as one table each."""
    if isinstance(obj, list):
        if obj and all(isinstance(r, Mapping) for r in obj):
            return [records_table(obj, caption, max_rows)]
        return [Table(["value"], [[v] for v in obj[:max_rows]], caption, more=max(0, len(obj) - max_rows))]
    if not isinstance(obj, Mapping):
        return [Table(["value"], [[obj]], caption)]
    scalars = [[k, v] for k, v in obj.items() if _scalar(v)]
    nested = {k: v for k, v in obj.items() if not _scalar(v)}
    out = [Table(["key", "value"], scalars[:max_rows], caption, more=max(0, len(scalars) - max_rows))] * bool(scalars)
    if nested and all(isinstance(v, Mapping) and all(_scalar(x) for x in v.values()) for v in nested.values()):
        out.append(records_table([{"name": k, **v} for k, v in nested.items()], caption, max_rows))
    else:
        for key, value in nested.items():
            out += json_tables(value, f"{caption} / {key}" if caption else str(key), max_rows)
    return out


# --------------------------------------------------------------------------------------------- sections


def summary(files: RunFiles, run: ReportInputs) -> Section:
    evaluate = files.json(run.metrics / "evaluate.json") or {}
    validation = files.json(run.validated / "report.json") or {}
    facts = [("validation", "passed" if validation.get("success") else "FAILED" if validation else "not run"),
             ("rows used", validation.get("valid_rows")), ("fusion", evaluate.get("fusion")),
             ("model chosen on", f"validation {run.selection}"),
             ("Great Expectations Data Docs", validation.get("docs", ""))]
    return Section("summary", "Summary", [*headline(evaluate), Facts(facts)])


def card(files: RunFiles, run: ReportInputs) -> Section | None:
    manifest = run.validated / MANIFEST_NAME
    if not manifest.is_file():
        return None
    files.used.add(manifest.resolve())
    return model_card(read_manifest(manifest), files.json(run.validated / "report.json") or {},
                      files.json(run.metrics / "evaluate.json") or {}, files.yaml(run.best_config) or {},
                      files.json(run.metrics / "tune.json") or {}, dataset=run.dataset, selection=run.selection,
                      intended_use=run.intended_use, limitations=run.limitations, resamples=run.resamples)


def _ci(entry: Mapping[str, Any], key: str = "ci95") -> tuple[float | None, float | None]:
    return tuple(entry.get(key) or (None, None))


def _paired_rows(paired: Mapping[str, Any], with_fused: bool) -> list[list]:
    return [[n, p.get("n"), pct(p.get("accuracy")), *([pct(p.get(f"{FUSED}_accuracy"))] if with_fused else []),
             pts(p.get(f"{FUSED}_minus")), interval(*_ci(p, f"{FUSED}_minus_ci95"), pts)] for n, p in paired.items()]


def metrics(files: RunFiles, run: ReportInputs) -> Section | None:
    evaluate = files.json(run.metrics / "evaluate.json")
    if not evaluate:
        return None
    models, paired = evaluate.get("models", {}), evaluate.get("paired", {})
    names = list(models)
    rows = [[n, model_kind(n), pct(s.get("accuracy")), interval(*_ci(s)), s.get("macro_f1"), s.get("n")]
            for n, s in models.items()]
    blocks: list = [Table(["model", "kind", "accuracy", "95% interval", "macro-F1", "n"], rows,
                          caption="Test accuracy, each model on the rows where its inputs exist")]
    if names:
        lows, highs = zip(*[_ci(models[n]) for n in names])
        chart = interval_chart(names, [models[n]["accuracy"] for n in names], lows, highs, highlight=FUSED,
                               xlabel="test accuracy (dot) and 95% bootstrap interval (bar)")
        blocks.append(Figure(chart, "test accuracy per model with 95% intervals",
                             "Accuracy per model; the fused model in orange."))
    if paired:
        lows, highs = zip(*[_ci(p, f"{FUSED}_minus_ci95") for p in paired.values()])
        chart = interval_chart([f"fused − {n}" for n in paired], [p[f"{FUSED}_minus"] for p in paired.values()],
                               lows, highs, reference=0.0, reference_label="no difference",
                               xlabel="paired accuracy difference (fused minus model) and 95% interval")
        blocks.append(Figure(chart, "paired accuracy differences with 95% intervals",
                             "Right of the dashed line: the fused model is better on the rows both models see."))
        blocks.append(Table(["model", "n paired", "model accuracy", "fused accuracy", "fused minus model",
                             "95% interval"], _paired_rows(paired, with_fused=True),
                            caption="Paired comparisons on the rows both models see"))
    strict = evaluate.get("all_rows_abstain_wrong")
    if strict:
        blocks.append(Table(["model", "n", "accuracy", "fused minus model", "95% interval"],
                            _paired_rows(strict, with_fused=False),
                            caption="Stricter: every test row counted, a row a model cannot see counted as wrong"))
    extra = {k: v for k, v in evaluate.items() if k not in _EVALUATE_SHOWN and not _scalar(v)}
    for key, value in extra.items():
        blocks += [Heading(key.replace("_", " ")), *json_tables(value, key, run.max_rows)]
    return Section("metrics", "Metrics", blocks)


def confusion(files: RunFiles, run: ReportInputs) -> Section | None:
    """Every DVCLive confusion-matrix file (records with `actual` and `predicted`) under the plots folder."""
    blocks: list = []
    for path in files.unused(run.plots, {".json"}):
        records = read_json(path)
        if not (isinstance(records, list) and records and all({"actual", "predicted"} <= set(r) for r in records)):
            continue
        files.used.add(path.resolve())
        labels = sorted({str(r["actual"]) for r in records} | {str(r["predicted"]) for r in records},
                        key=lambda s: (len(s), s))
        index = {label: i for i, label in enumerate(labels)}
        counts = np.zeros((len(labels), len(labels)), dtype=int)
        for r in records:
            counts[index[str(r["actual"])], index[str(r["predicted"])]] += 1
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        blocks.append(Figure(confusion_chart(labels, counts, "predicted", "actual"), f"confusion matrix {path.name}",
                             f"{path.relative_to(run.plots)}: {counts.sum()} predictions, {pct(accuracy)} on the "
                             "diagonal."))
    return Section("confusion", "Confusion matrix", blocks) if blocks else None


def validation(files: RunFiles, run: ReportInputs) -> Section | None:
    report = files.json(run.validated / "report.json")
    if report is None:
        return None
    files.json(run.metrics / "validate.json")  # the same counts, shown here
    facts = [(k.replace("_", " "), v) for k, v in report.items() if not isinstance(v, (list, dict))]
    verdict = Text("passed", "good") if report.get("success") else Text("FAILED", "warning")
    blocks: list = [verdict, Facts(facts)]
    checks = report.get("checks") or []
    if checks:
        blocks.append(records_table(checks, "Checks (Great Expectations); count: rows that fail it", len(checks),
                                    first=("name", "meaning", "scope", "success", "count")))
    failing = report.get("failing_rows") or []
    blocks.append(records_table(failing, "Failing rows", run.max_rows, first=("row", "sample_id", "column", "reason"))
                  if failing else Text("No failing row.", "muted"))
    for key in ("dataset_failures", "warnings"):
        if report.get(key):
            blocks += [Heading(key.replace("_", " ")), Bullets([str(v) for v in report[key]])]
    return Section("validation", "Validation", blocks)


def tuning(files: RunFiles, run: ReportInputs) -> Section | None:
    tune = files.json(run.metrics / "tune.json")
    if tune is None:
        return None
    blocks: list = [Facts(list(tune.items()))]
    trials_csv = run.metrics / "tune_trials.csv"
    if trials_csv.is_file():
        trials = files.csv(trials_csv)
        metric = run.selection
        sign = -1 if run.selection_mode == "max" else 1
        ranked = sorted(trials, key=lambda r: sign * r[metric] if isinstance(r.get(metric), (int, float))
                        else float("inf"))  # trials without the metric (failed) last
        blocks.append(records_table(ranked, f"Trials, best {metric} first", run.max_rows))
    for path in files.unused(run.plots / "tune", set(IMAGE_TYPES)):
        files.used.add(path.resolve())
        blocks.append(Figure(image_uri(path), path.stem.replace("_", " "), str(path.relative_to(run.plots))))
    return Section("tuning", "Tuning", blocks)


# Columns of the compression table, in this order (plots/compress/front.json has more: every timing).
_COMPRESS_SHOWN = ("variant", "accuracy", "minus_original", "minus_original_ci95_lo", "minus_original_ci95_hi",
                   "within_1_point", "size_ratio", "cpu_throughput_ratio", "latency_ms", "weights_bytes",
                   "model_bytes", "sparsity", "encoding")


def compression(files: RunFiles, run: ReportInputs) -> Section | None:
    """The compress stage's variants: the accuracy-vs-latency front and the table against the original."""
    rows = files.json(run.plots / "compress" / "front.json")
    files.json(run.metrics / "compress.json")  # the same figures, deterministic ones only: shown here already
    if not rows:
        return None
    chart = front_chart([r["variant"] for r in rows], [r["latency_ms"] for r in rows], [r["accuracy"] for r in rows],
                        [r.get("accuracy_ci95_lo") for r in rows], [r.get("accuracy_ci95_hi") for r in rows],
                        "CPU latency of one call at the smallest batch timed (ms)")
    table = records_table([{k: r[k] for k in _COMPRESS_SHOWN if k in r} for r in rows],
                          "Each variant on the original's test rows; differences are variant minus original with a "
                          "paired 95% interval; size and throughput are ratios to the original", run.max_rows)
    return Section("compression", "Compressed variants", [
        Text("Variants of the chosen model (compress stage): int8 weights, a distilled student, magnitude pruning. "
             "Timings vary from run to run; accuracy and sizes do not."),
        Figure(chart, "accuracy against CPU latency of each variant", "plots/compress/front.json"), table])


def other_results(files: RunFiles, run: ReportInputs) -> Section | None:
    """Every metrics/plots file no section above used: JSON as tables, CSV as a table, images inline."""
    blocks: list = []
    for path in files.unused(run.metrics, {".json", ".csv"}) + files.unused(run.plots, {".json", ".csv"}):
        data = files.csv(path) if path.suffix == ".csv" else files.json(path)
        if data in ({}, [], None):
            continue
        blocks += [Heading(str(path)), *json_tables(data, "", run.max_rows)]
    for path in files.unused(run.plots, set(IMAGE_TYPES)):
        files.used.add(path.resolve())
        blocks.append(Figure(image_uri(path), path.stem.replace("_", " "), str(path)))
    return Section("other", "Other results", blocks, folded=True) if blocks else None


def parameters(files: RunFiles, run: ReportInputs) -> Section:
    blocks = [Code(yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=110).rstrip())
              for key, value in run.params.items()]
    return Section("params", "Parameters", [Text("The params.yaml sections this report depends on.", "muted"),
                                             *blocks], folded=True)


SECTIONS: tuple[Callable[[RunFiles, ReportInputs], Section | None], ...] = (
    summary, card, metrics, explained.calibration, explained.why, confusion, validation, tuning, compression,
    other_results, parameters)


def build_report(run: ReportInputs) -> str:
    """The report as one HTML document (no external reference, no script)."""
    files = RunFiles()
    sections = [s for s in (build(files, run) for build in SECTIONS) if s is not None]
    subtitle = f"{run.dataset}: model chosen on validation {run.selection}; every figure on the test split, " \
               "with 95% bootstrap intervals"
    return render_page(run.title, subtitle, sections)

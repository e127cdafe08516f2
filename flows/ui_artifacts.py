"""Builders for the Prefect UI artifacts: plain functions from pipeline files to markdown or table rows.

Nothing here talks to Prefect, so each builder is testable on its own; `flows.pipeline` publishes the results.
The readers are lenient on purpose: a report field that a stage adds or drops later should change the artifact,
not fail the flow run after the whole pipeline has succeeded. Every value that can come from a manifest (sample
ids, labels, reasons) goes through `markdown_literal`: the UI renders markdown, where a label
`![x](http://host/p.png)` would otherwise make every viewer's browser fetch that URL.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flows.dvc_tools import Plot
from multimodal.pipeline.escape import markdown_literal
from multimodal.reporting.experiments import Experiment, Metric, Ranking, comparison, flatten, ranked

MAX_ROWS = 50  # markdown is for reading: not the whole failing-row list of a big dataset


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _md(value: Any) -> str:
    return markdown_literal(str(_cell(value)))


def _md_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "_none_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(map(_md, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(_md(row.get(c, "")) for c in columns) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n_... {len(rows) - MAX_ROWS} more rows_")
    return "\n".join(lines)


def validation_markdown(report: Mapping[str, Any], docs_index: Path | None) -> str:
    """The validate stage's report.json as markdown: verdict, counts, every check, the failing rows."""
    verdict = "passed" if report.get("success") else "FAILED"
    scalars = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
    parts = [f"# Data validation {verdict}", "", _md_table([{"field": k, "value": v} for k, v in scalars.items()])]
    if report.get("labels"):
        parts += ["", f"**Labels ({len(report['labels'])}):** " + ", ".join(map(_md, report["labels"]))]
    for key, value in report.items():
        if not isinstance(value, list) or key == "labels":
            continue
        title = _md(key.replace("_", " "))
        if not value:
            parts += ["", f"## {title}: none"]
        elif all(isinstance(v, Mapping) for v in value):
            parts += ["", f"## {title} ({len(value)})", "", _md_table(value)]
        else:
            parts += ["", f"## {title} ({len(value)})", ""] + [f"- {_md(v)}" for v in value[:MAX_ROWS]]
    if docs_index is not None:
        parts += ["", f"Great Expectations Data Docs: [`{docs_index}`]({docs_index.as_uri()}) "
                      "(open the file in a browser on the machine that ran the flow)"]
    return "\n".join(parts)


def metrics_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`{file: parsed json}` -> one row per scalar metric, dotted keys as `dvc metrics show` prints them."""
    rows = []
    for path, data in metrics.items():
        for key, value in flatten(data).items():
            rows.append({"file": path, "metric": key, "value": _cell(value)})
    return rows


def confusion_rows(records: Sequence[Mapping[str, Any]], plot: Plot) -> list[dict[str, Any]]:
    """DVC's confusion plot data (one record per prediction) -> counts: a row per actual, a column per predicted."""
    x, y = plot.props.get("x", "actual"), plot.props.get("y", "predicted")
    counts = Counter((str(r[x]), str(r[y])) for r in records)
    labels = sorted({a for a, _ in counts} | {p for _, p in counts}, key=lambda s: (len(s), s))
    return [{f"{x} \\ {y}": a, **{p: counts.get((a, p), 0) for p in labels}} for a in labels]


def confusion_records(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    # DVCLive writes a list; `dvc plots show --json`-style files nest it under the plot name.
    return list(next(iter(data.values()))) if isinstance(data, dict) else list(data)


def best_config_markdown(text: str, path: str) -> str:
    # A fence longer than any run of backticks in the text: nothing inside can close it early.
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"# Best configuration\n\n{_md(path)}\n\n{fence}yaml\n{text.rstrip()}\n{fence}"


def experiments_rows(experiments: Sequence[Experiment], metrics: Sequence[Metric], limit: int,
                     ranking: Ranking, current: str | None = None) -> list[dict[str, Any]]:
    """The `limit` best runs by `ranking` (this run added if it ranks lower) as `python -m stages.compare` shows
    them (`multimodal.reporting.experiments.comparison`): rank, name, rev, created, kind, the params that differ among
    them
    (full keys), the validation metric, then `metrics`."""
    order = ranked(experiments, ranking)
    chosen = order[:limit] + [e for e in order[limit:] if e.name == current]
    table = comparison(chosen, ranking, metrics)
    rows = []
    for exp, row in zip(table.runs, table.rows()):
        row["experiment"] += " (this run)" if exp.name == current else ""
        rows.append({"rank": order.index(exp) + 1, **{k: _cell(v) for k, v in row.items()}})
    return rows

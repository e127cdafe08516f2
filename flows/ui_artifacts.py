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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.dvc_tools import Experiment, Plot, flatten
from multimodal.escape import markdown_literal

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


@dataclass(frozen=True)
class Ranking:
    """What orders the runs: a validation metric (`best_val_accuracy` of tune.json) and its direction.

    Never a test metric: test figures are reported beside each run, but choosing by them would overfit the test set.
    """

    path: str  # metrics file, as DVC names it: metrics/tune.json
    key: str
    mode: str  # max | min

    @property
    def column(self) -> str:
        return f"{Path(self.path).stem}.{self.key}"

    def value(self, exp: Experiment) -> float | None:
        value = (exp.metrics.get(self.path) or {}).get(self.key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ranked(experiments: Sequence[Experiment], ranking: Ranking) -> list[Experiment]:
    """Best validation value first (newest first among equals); runs without the metric last, newest first."""
    newest_first = sorted(experiments, key=lambda e: e.timestamp, reverse=True)
    sign = -1.0 if ranking.mode == "max" else 1.0
    scored = [e for e in newest_first if ranking.value(e) is not None]
    return sorted(scored, key=lambda e: sign * ranking.value(e)) + [e for e in newest_first if e not in scored]


def experiments_rows(experiments: Sequence[Experiment], headline_metrics: Sequence[str], limit: int,
                     ranking: Ranking, current: str | None = None) -> list[dict[str, Any]]:
    """The `limit` best runs by `ranking` (this run added if it ranks lower): rank, name, rev, created, the params
    that differ among them, the validation metric, then the top-level (headline) keys of `headline_metrics`.

    Only params that differ are shown: with ~100 params per run the table is otherwise unreadable, and the
    differences are what a comparison is about. Nested metrics (per-model details) stay in the metrics artifact.
    """
    order = ranked(experiments, ranking)
    chosen = order[:limit] + [e for e in order[limit:] if e.name == current]
    keys = list(dict.fromkeys(k for e in chosen for k in e.params))
    varying = [k for k in keys if len({json.dumps(e.params.get(k), sort_keys=True) for e in chosen}) > 1]
    rows = []
    for exp in chosen:
        row: dict[str, Any] = {
            "rank": order.index(exp) + 1,
            "experiment": exp.name + (" (this run)" if exp.name == current else ""),
            "rev": exp.rev,
            "created": exp.timestamp,
            "kind": "baseline" if exp.baseline else "experiment",
        }
        row.update({k: _cell(exp.params.get(k)) for k in varying})
        row[ranking.column] = _cell(ranking.value(exp))
        for path in headline_metrics:
            stem = Path(path).stem
            for key, value in (exp.metrics.get(path) or {}).items():
                if "." not in key and isinstance(value, (int, float)):  # bool too: fused_beats_baseline
                    row[f"{stem}.{key}"] = _cell(value)
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c, "") for c in columns} for row in rows]  # one shape: the UI table needs every cell

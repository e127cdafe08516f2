"""The runs of `dvc exp show --json` as a table people can read: the params that differ, then a few chosen metrics.

The first metric is the validation figure tune selected the model on; runs are ordered by it, never by a test
figure (choosing by test would overfit the test set). The test figures follow: the fused model's accuracy, the
fused model minus the best unimodal one, the classical baseline. `python -m stages.compare` prints the table and
the Prefect `experiments` artifact shows the same rows (`comparison`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.workspace import project_env
from multimodal.pipeline.metrics_files import HEADLINE


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str
    timestamp: str
    baseline: bool
    params: dict[str, Any]  # flattened `params.yaml` keys
    metrics: dict[str, dict[str, Any]]  # metrics file -> flattened keys


def parse_exp_show(shown: list[dict[str, Any]]) -> list[Experiment]:
    """`dvc exp show --json` output -> each baseline commit and every experiment on it (the workspace left out)."""
    found = []

    def record(entry: dict, name: str, baseline: bool) -> None:
        data = entry.get("data") or {}
        params = {}
        for values in (data.get("params") or {}).values():
            params.update(flatten(values.get("data") or {}))
        metrics = {path: flatten(values.get("data") or {}) for path, values in (data.get("metrics") or {}).items()}
        found.append(Experiment(name, entry["rev"][:7], data.get("timestamp") or "", baseline, params, metrics))

    for base in shown:
        if base.get("rev") == "workspace":
            continue
        record(base, base.get("name") or base["rev"][:7], True)
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                record(rev, exp.get("name") or rev.get("name") or rev["rev"][:7], False)
    return found


def exp_show(workspace: Path, all_commits: bool = False) -> list[Experiment]:
    """Run `dvc exp show --json` in `workspace` (`-A`: experiments of every commit, not only HEAD's)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["-A"] if all_commits else [])]
    done = subprocess.run(cmd, cwd=workspace, env=project_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dvc exp show exited {done.returncode}: {done.stderr[-2000:]}")
    return parse_exp_show(json.loads(done.stdout))


@dataclass(frozen=True)
class Metric:
    """One metric column: a key of a DVC metrics file, and its column header."""

    path: str  # as DVC names the file: metrics/tune.json
    key: str
    label: str

    def value(self, exp: Experiment) -> Any:
        return (exp.metrics.get(self.path) or {}).get(self.key)


@dataclass(frozen=True)
class Ranking:
    """What orders the runs: a validation metric (`best_val_accuracy` of tune.json) and its direction."""

    path: str
    key: str
    mode: str  # max | min

    @property
    def column(self) -> str:
        return f"{Path(self.path).stem}.{self.key}"

    @property
    def metric(self) -> Metric:
        return Metric(self.path, self.key, self.key.removeprefix("best_"))

    def value(self, exp: Experiment) -> float | None:
        value = self.metric.value(exp)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ranking_for(metrics_dir: str | Path, tune_metric: str, mode: str) -> Ranking:
    """The metric tune selects on (params `tune.metric` / `tune.mode`), as tune.json records its best value."""
    return Ranking(str(Path(metrics_dir) / "tune.json"), f"best_{tune_metric}", mode)


def headline_metrics(metrics_dir: str | Path) -> list[Metric]:
    """The test figures shown after the validation metric (keys of evaluate's headline file)."""
    path = str(Path(metrics_dir) / HEADLINE)
    return [Metric(path, "fused_accuracy", "test_fused"),
            Metric(path, "fused_minus_best_unimodal", "fused-unimodal"),
            Metric(path, "baseline_accuracy", "baseline")]


def ranked(experiments: Sequence[Experiment], ranking: Ranking) -> list[Experiment]:
    """Best validation value first (newest first among equals); runs without the metric last, newest first."""
    newest_first = sorted(experiments, key=lambda e: e.timestamp, reverse=True)
    sign = -1.0 if ranking.mode == "max" else 1.0
    scored = [e for e in newest_first if ranking.value(e) is not None]
    return sorted(scored, key=lambda e: sign * ranking.value(e)) + [e for e in newest_first if e not in scored]


def differing_params(experiments: Sequence[Experiment]) -> list[str]:
    """Params whose value is not the same in every run: with ~100 params the rest only hides what differs."""
    keys = list(dict.fromkeys(k for e in experiments for k in e.params))
    return [k for k in keys if len({json.dumps(e.params.get(k), sort_keys=True) for e in experiments}) > 1]


@dataclass(frozen=True)
class Comparison:
    runs: list[Experiment]  # ranked
    params: list[str]  # full dotted keys that differ among `runs`
    metrics: list[Metric]  # the ranking's metric first

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run: experiment, rev, created, kind, the differing params, the metrics (by label)."""
        return [{"experiment": e.name, "rev": e.rev, "created": e.timestamp,
                 "kind": "baseline" if e.baseline else "experiment",
                 **{k: e.params.get(k) for k in self.params}, **{m.label: m.value(e) for m in self.metrics}}
                for e in self.runs]


def comparison(experiments: Sequence[Experiment], ranking: Ranking, metrics: Sequence[Metric]) -> Comparison:
    runs = ranked(experiments, ranking)
    return Comparison(runs, differing_params(runs), [ranking.metric, *metrics])


# --- the terminal table ----------------------------------------------------------------------------------------


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last component, or as many last components as make it unique among `keys`."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for other in keys if other == tail or other.endswith("." + tail)) == 1:
                break
        out[key] = tail
    return out


def _text(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


NAME_WIDTH = 24  # experiment names are clipped beyond this
PARAM_WIDTH = 14  # and param values beyond this or their header's width: a long list tells little anyway


def render(table: Comparison, width: int = 100) -> str:
    """The comparison as fixed-width text no wider than `width`: name, differing params (short names), metrics.

    Metrics always show; param columns that do not fit are left out and named below the table.
    """
    short = short_names(table.params)
    columns = [("experiment", [_clip(e.name + ("*" if e.baseline else ""), NAME_WIDTH) for e in table.runs])]
    params = [(short[k], [_clip(_text(e.params.get(k), 0), max(PARAM_WIDTH, len(short[k]))) for e in table.runs])
              for k in table.params]
    metrics = [(m.label, [_text(m.value(e), 4) for e in table.runs]) for m in table.metrics]

    def size(cols) -> int:
        return sum(max([len(h), *(len(c) for c in cells)]) for h, cells in cols) + 2 * (len(cols) - 1)

    shown = list(params)
    while shown and size(columns + shown + metrics) > width:
        shown.pop()
    cols = columns + shown + metrics
    widths = [max([len(h), *(len(c) for c in cells)]) for h, cells in cols]
    numeric = [False] * (len(columns) + len(shown)) + [True] * len(metrics)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)).rstrip()

    lines = [line([h for h, _ in cols]), line(["-" * w for w in widths])]
    lines += [line([cells[i] for _, cells in cols]) for i in range(len(table.runs))]
    hidden = [short[k] for k in table.params[len(shown):]]
    if hidden:
        lines.append(_clip(f"{len(hidden)} more differing params (a wider terminal shows them): " + ", ".join(hidden),
                           width))
    return "\n".join(lines)

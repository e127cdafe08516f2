"""Which stage outputs are DVC metrics and which are reports, so `dvc exp show` opens with what compares runs.

DVC metrics (`metrics:` in dvc.yaml), small and flat: `tune.json` (the validation figure the model was selected
on, first) and evaluate's `headline.json` (the test figures). Reports (`outs:`, `cache: false`, kept by git, shown
by the Prefect metrics artifact): `evaluate.json` (every model's scores, paired comparisons), `baseline.json`,
`align.json` (retrieval recalls) and `validate.json` (a count per check): as metrics they made dozens of columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADLINE = "headline.json"


def headline_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's top-level scalars (numbers, booleans, names), in its order; nested details stay in the report."""
    return {k: v for k, v in report.items() if v is None or isinstance(v, (str, int, float, bool))}

"""A comparison's claim ("beats the baseline", "fusion helps") read from its paired 95% interval, never from the
sign of a point estimate.

Three verdicts, from the interval of the paired difference (A minus B, on the rows both see):

- `shown`: the lower bound is above 0 (the claim holds at this test set's resolution);
- `worse`: the upper bound is below 0 (the opposite is shown);
- `not shown`: the interval holds 0, or there is no interval (no row both models see). A positive point
  estimate with an interval like [-0.2, +5.8] points reads `not shown`.

`claim` gives the details evaluate.json keeps under `claims` (with the sentence the report shows);
`headline_keys` the flat columns `dvc exp show` compares (a boolean and the verdict string).
"""

from __future__ import annotations

from collections.abc import Sequence

SHOWN, NOT_SHOWN, WORSE = "shown", "not shown", "worse"


def verdict(interval: Sequence[float] | None) -> str:
    """`shown` when the interval lies above 0, `worse` when below, `not shown` otherwise (or without one)."""
    if not interval or interval[0] is None or interval[1] is None:
        return NOT_SHOWN
    low, high = interval
    return SHOWN if low > 0 else WORSE if high < 0 else NOT_SHOWN


def sentence(statement: str, difference: float | None, interval: Sequence[float] | None, n: int) -> str:
    """`statement`'s verdict in words: `Fusion helps: not shown (+2.8 points, 95% interval [-0.2, +5.8], 450 rows
    paired; the interval holds 0).`"""
    found = verdict(interval)
    if difference is None or not interval:
        return f"{statement}: {found} (no row both models see)."
    low, high = interval
    figures = f"{100 * difference:+.1f} points, 95% interval [{100 * low:+.1f}, {100 * high:+.1f}], {n} rows paired"
    why = {SHOWN: "the whole interval is above 0", WORSE: "the whole interval is below 0",
           NOT_SHOWN: "the interval holds 0"}[found]
    return f"{statement}: {found} ({figures}; {why})."


def claim(statement: str, difference: float | None, interval: Sequence[float] | None, n: int) -> dict:
    """One claim for evaluate.json's `claims`: its statement, verdict, whether it holds (only when shown), the
    paired figures behind it and the sentence the report shows."""
    found = verdict(interval)
    return {"statement": statement, "holds": found == SHOWN, "verdict": found, "difference": difference,
            "ci95": list(interval) if interval else None, "n": n,
            "sentence": sentence(statement, difference, interval, n)}


def headline_keys(key: str, made: dict) -> dict:
    """The claim's `dvc exp show` columns: `<key>` (True only when shown) and `<key>_verdict`; the interval's
    bounds are the difference's own `_ci95_lo` / `_ci95_hi` columns."""
    return {key: made["holds"], f"{key}_verdict": made["verdict"]}

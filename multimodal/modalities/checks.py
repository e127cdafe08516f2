"""The unit of validation: a named Great Expectations expectation over the profile table, and how to explain a row
that fails it. Modality modules declare theirs with these helpers (`Modality.row_checks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

# (row position, profile row as a dict, whole profile) -> (manifest column, why this row fails)
Reason = Callable[[int, dict[str, Any], pd.DataFrame], tuple[str, str]]


@dataclass(frozen=True)
class Check:
    """One named check: a GX expectation plus, for row checks, how to explain a failing row."""

    name: str  # stable key in report.json, the metrics and docs/data.md
    meaning: str  # one line: what passing means (shown in Data Docs as the expectation's notes)
    expectation: Any  # a GX Expectation; meta["check"] carries `name` through the GX result
    reason: Reason | None = None  # row checks only


def manifest_row(index: int) -> int:
    """Row number as a spreadsheet shows the manifest (header = row 1); ingest's messages count the same way."""
    return index + 2


def row_index(row: int) -> int:
    """The 0-based frame position of manifest row `row` (the inverse of `manifest_row`)."""
    return row - 2


def shown(values: Sequence[Any], limit: int = 20) -> list[Any]:
    """`values` for a message: the first `limit`, then "..."."""
    return list(values) if len(values) <= limit else [*values[:limit], "..."]


def at(column: str, why: str) -> Reason:
    """A reason naming a fixed manifest column; `why` is formatted with the profile row's fields
    (`{image_width}`: the profile column of modality `image`, field `width`)."""
    return lambda _index, row, _profile: (column, why.format(**row))


def duplicate_of(key: str, column: str, what: str) -> Reason:
    """Reason for a duplicated value in profile `key`: names the other rows holding the same value."""
    groups: dict[Any, Any] = {}  # value -> row positions, computed once on first use (not once per failing row)

    def reason(index: int, row: dict[str, Any], profile: pd.DataFrame) -> tuple[str, str]:
        if not groups:
            groups.update(profile.groupby(key).indices)
        group = groups[row[key]]
        others = [f"{profile.at[i, 'sample_id']!s} (row {manifest_row(i)})" for i in group[:6] if i != index][:5]
        return column, f"{what} also in {others + ['...'] * (len(group) > 6)}"

    return reason


def between(ex: Any, modality: str, field: str, low: float | None, high: float | None, meaning: str,
            why: str, name: str | None = None) -> Check:
    """Check `<modality>_<field>` in [low, high] (None: open), named `name` or `<modality>_<field>`; rows without
    the modality hold nulls there, which GX skips. `why` is formatted with the profile row (see `at`)."""
    column = f"{modality}_{field}"
    return Check(name or column, meaning, ex.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high),
                 at(modality, why))


def one_of(ex: Any, modality: str, field: str, allowed: Sequence[Any], meaning: str, why: str) -> Check:
    """Check `<modality>_<field>` is one of `allowed`, named `<modality>_<field>`."""
    column = f"{modality}_{field}"
    return Check(column, meaning, ex.ExpectColumnValuesToBeInSet(column=column, value_set=list(allowed)),
                 at(modality, why))

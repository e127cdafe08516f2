"""Which stages a flow run hands to `dvc repro`, from one read of DVC's status before any stage runs.

`dvc status` compares each stage with the files on disk now. A stage downstream of a stale one can look up to date
until that upstream re-runs and rewrites its deps, so every stage from a stale one onward (the stale stages and
all their descendants) runs through `dvc repro`, which asks DVC again when its turn comes. Only a stage that is up
to date and has no stale ancestor is known to be cached without starting a process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flows.dvc_tools import Stage


def stale_stages(stages: Sequence[Stage], changes: Mapping[str, Any] | None) -> set[str]:
    """Names of the stages to reproduce: those with DVC changes and everything downstream of them.

    changes: `{stage: what changed}` as `dvc status --json` lists it (an empty entry means up to date);
        None when DVC could not be asked (its lock was busy): then every stage asks DVC itself, as it runs.
    """
    names = {stage.name for stage in stages}
    if changes is None:
        return names
    downstream: dict[str, list[str]] = {stage.name: [] for stage in stages}
    for stage in stages:
        for upstream in stage.upstream:
            downstream.setdefault(upstream, []).append(stage.name)
    stale: set[str] = set()
    todo = [stage.name for stage in stages if changes.get(stage.name)]
    while todo:
        name = todo.pop()
        if name not in stale:
            stale.add(name)
            todo.extend(downstream.get(name, ()))
    return stale & names

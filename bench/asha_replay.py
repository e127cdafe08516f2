"""Which ASHA setting finds the exhaustive search's best at the least cost: one exhaustive study, every setting
replayed on it.

A trial's training does not depend on the scheduler: its seed, its config and its LR schedule (`asha.max_epochs`
long) are fixed, so ASHA stopping it at epoch e leaves exactly the first e epochs of the same trial run to the end.
One FIFO study (every trial to `max_epochs` or its own early stop) therefore holds the outcome of every ASHA
setting: this script runs that study once through the product's `run_search` (or reads the epochs table of one,
`--epochs`), then drives Ray's own `ASHAScheduler` over those curves for each (grace period, reduction factor),
trials in order as the stage decides them (`multimodal/tuning/rungs.py`), and prints the epochs each setting
trains, its share of the exhaustive study's epochs (the wall time follows it for the `full` strategy: epochs are
~5 s, fixed costs a few), and how far its best validation accuracy is from the exhaustive best. The test split is
never read: validation selects.

    python bench/asha_replay.py --project DIR [--num-samples 6] [--out bench/results/asha_replay.json]
    python bench/asha_replay.py --epochs metrics/tune_epochs.csv   # replay a FIFO study's table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = [(g, rf) for g in (1, 2, 3, 4, 5, 6, 8) for rf in (2, 3, 4)]


def exhaustive_study(project: Path, num_samples: int) -> tuple[pd.DataFrame, float, dict]:
    """Run the project's tune search with FIFO (every trial to its end); its epochs table, wall seconds, settings."""
    import copy

    import ray

    from multimodal.pipeline.params import load_params, stage_params
    from multimodal.pipeline.runtime import go_offline
    from multimodal.tuning.params import TUNE
    from multimodal.tuning.results import epochs_table
    from multimodal.tuning.search import run_search

    os.chdir(project)
    raw = copy.deepcopy(load_params(Path("params.yaml"), stage="tune", schema=TUNE).raw_params())
    raw["tune"].update(scheduler="fifo", num_samples=num_samples)
    params = stage_params(raw, stage="tune", schema=TUNE)
    go_offline()  # as stages.tune: trials build every model from align's saved weights
    cfg = params.tune
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=project / ".ray") as tmp:
        try:
            results = run_search(params, project, Path(tmp))
        finally:
            ray.shutdown()
    seconds = time.perf_counter() - started
    settings = {"strategy": cfg.fixed.strategy, "max_epochs": cfg.asha.max_epochs, "num_samples": num_samples,
                "max_concurrent_trials": cfg.max_concurrent_trials, "cpus_per_trial": cfg.cpus_per_trial,
                "space": cfg.space, "patience": cfg.fixed.patience}
    return epochs_table(results), seconds, settings


def replay(curves: dict[str, list[float]], grace: int, rf: int, max_t: int) -> dict:
    """Ray's ASHA over the curves (trial -> val accuracy per epoch), trials decided in trial order at each rung."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=max_t, grace_period=grace,
                         reduction_factor=rf)
    trained, best = {}, (-1.0, "")
    # In trial order: each trial meets the rung values of the earlier ones only, as the stage's ordered rungs do.
    for trial_id, curve in sorted(curves.items()):
        trial = SimpleNamespace(trial_id=trial_id, status="RUNNING")
        asha.on_trial_add(None, trial)
        for epoch, value in enumerate(curve, start=1):
            trained[trial_id] = epoch
            best = max(best, (value, trial_id), key=lambda b: b[0])
            if asha.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": value}) == "STOP":
                break
    return {"epochs": sum(trained.values()), "best": best[0], "best_trial": best[1], "trained": trained}


def makespan(curves: dict[str, list[float]], slots: int, stop_at: dict[str, int]) -> int:
    """Epoch-times until the last trial ends when `slots` trials run at once, each epoch one unit, trial k taking
    the next free slot, trained `stop_at[k]` epochs, and waiting at a rung for the earlier trials (the stage's
    order: a trial's turn at rung e comes once every earlier trial has trained e epochs or ended)."""
    order = sorted(curves)
    clock, free, done_at, reached = 0, [0] * slots, {}, {}
    for trial in order:  # trials start in order on the slot that frees first
        slot = min(range(slots), key=lambda s: free[s])
        t = free[slot]
        for epoch in range(1, stop_at[trial] + 1):
            t += 1
            # Turn at this epoch: every earlier trial that trains this far has got here (rungs only matter, but an
            # upper bound that waits at every epoch is within a few units of it; exact enough for shares).
            t = max([t] + [reached[(e, epoch)] for e in order[:order.index(trial)] if (e, epoch) in reached])
            reached[(trial, epoch)] = t
        free[slot] = done_at[trial] = t
        clock = max(clock, t)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project reproduced up to align (a FIFO study runs there)")
    parser.add_argument("--epochs", type=Path, help="instead: the tune_epochs.csv of a FIFO study")
    parser.add_argument("--num-samples", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, help="with --epochs: the study's asha.max_epochs (default 20)")
    parser.add_argument("--slots", type=int, default=2, help="trials at once, for the time shares (default 2)")
    parser.add_argument("--first", type=int, help="replay only the first N trials (a smaller study's, same seeds)")
    parser.add_argument("--out", type=Path, help="write the study's curves and the table here (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.epochs:
        table, seconds, settings = pd.read_csv(args.epochs, dtype={"trial": str}), None, {
            "max_epochs": args.max_epochs or 20}
    else:
        table, seconds, settings = exhaustive_study(args.project.resolve(), args.num_samples)
    max_t = settings["max_epochs"]
    curves = {t: list(g.sort_values("epoch")["val_accuracy"]) for t, g in table.groupby("trial")}
    curves = dict(sorted(curves.items())[: args.first])
    total = sum(len(c) for c in curves.values())
    best = max(max(c) for c in curves.values())
    print(f"exhaustive study: {len(curves)} trials, {total} epochs, best val accuracy {best:.4f}"
          + (f", {seconds:.0f} s ({seconds / total:.1f} s an epoch)" if seconds else "") + f"; {settings}\n")
    slots = args.slots
    whole = makespan(curves, slots, {t: len(c) for t, c in curves.items()})
    print(f"| grace | rf | epochs | share of exhaustive | time share, {slots} at once | best val acc | "
          f"vs exhaustive (points) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for grace, rf in SETTINGS:
        if grace >= max_t:
            continue
        r = replay(curves, grace, rf, max_t)
        gap, span = 100 * (r["best"] - best), makespan(curves, slots, r["trained"]) / whole
        rows.append({"grace_period": grace, "reduction_factor": rf, **r, "share": r["epochs"] / total,
                     "time_share": span, "gap": gap})
        print(f"| {grace} | {rf} | {r['epochs']} | {r['epochs'] / total:.0%} | {span:.0%} | {r['best']:.4f} | "
              f"{gap:+.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "seconds": seconds, "curves": curves, "rows": rows},
                                       indent=1, default=str))


if __name__ == "__main__":
    main()

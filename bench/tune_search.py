"""ASHA versus running every trial to completion (FIFO), same space, same seeded trial configs, one run.

Both studies go through the product's `run_search` (Ray Tune, local Ray) on the project's data, which must be
there up to `align` (`dvc repro align`). Prints wall time, epochs trained, trials per minute and the best
validation metric of each, and the ratios ASHA / FIFO.

    python bench/tune_search.py                        # frozen strategy (cached features), 24 trials, ~3 min
    python bench/tune_search.py --strategy full --num-samples 6 --max-epochs 12
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

from multimodal.pipeline.params import load_params, stage_params
from multimodal.pipeline.runtime import go_offline
from multimodal.pipeline.stage_params import StageParams
from multimodal.tuning.params import TUNE
from multimodal.tuning.results import best_trial, trial_table
from multimodal.tuning.search import run_search


def with_tune(raw: dict, **tune) -> StageParams:
    """The tune stage's params view of `raw` with `tune` entries replaced (checked as the stage checks them)."""
    raw = copy.deepcopy(raw)
    raw["tune"].update(tune)
    return stage_params(raw, stage="tune", schema=TUNE)


def study(raw: dict, scheduler: str, storage: Path) -> dict:
    import ray

    params = with_tune(raw, scheduler=scheduler)
    tune_cfg = params.tune
    start = time.perf_counter()
    try:
        results = run_search(params, Path.cwd(), storage)
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - start
    table = trial_table(results, tune_cfg.metric, tune_cfg.mode)
    best = best_trial(table, tune_cfg.metric, tune_cfg.mode)
    return {"seconds": seconds, "epochs": int(table["epochs"].sum()), "trials": len(table),
            "failed": int((table["status"] == "error").sum()), "best": float(best[tune_cfg.metric]),
            "best_trial": best["trial"], "best_config": {k[7:]: best[k] for k in table if k.startswith("config.")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="frozen", help="tune.fixed.strategy of every trial")
    parser.add_argument("--num-samples", type=int, default=24)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raw = load_params(stage="tune", schema=TUNE).raw_params()
    go_offline()  # as stages.tune: trials build every model from align's saved weights
    raw = with_tune(raw, num_samples=args.num_samples,
                    fixed={**raw["tune"]["fixed"], "strategy": args.strategy},
                    asha={"max_epochs": args.max_epochs, "grace_period": args.grace_period,
                          "reduction_factor": args.reduction_factor}).raw_params()
    tune_cfg = with_tune(raw).tune
    rows = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd() / ".ray") as tmp:
        for scheduler in ("fifo", "asha"):
            rows[scheduler] = study(raw, scheduler, Path(tmp) / scheduler)
    metric = tune_cfg.metric
    print(f"\nstrategy {args.strategy}, {args.num_samples} trials, space {dict(tune_cfg.space)}, max_epochs "
          f"{args.max_epochs}, ASHA grace {args.grace_period} rf {args.reduction_factor}, "
          f"{tune_cfg.cpus_per_trial:g} CPUs per trial, {tune_cfg.max_concurrent_trials} at once\n")
    print(f"| scheduler | wall s | epochs trained | trials/min | best {metric} | best trial | failed |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['epochs']} | {60 * r['trials'] / r['seconds']:.1f} | "
              f"{r['best']:.4f} | {r['best_trial']} | {r['failed']} |")
    fifo, asha = rows["fifo"], rows["asha"]
    print(f"\nASHA / FIFO: wall time {asha['seconds'] / fifo['seconds']:.0%}, epochs {asha['epochs'] / fifo['epochs']:.0%}; "
          f"best {metric} {100 * (asha['best'] - fifo['best']):+.2f} points "
          f"(target: within 1 point in at most 40% of the time)")
    print(f"best configs: fifo {fifo['best_config']}\n              asha {asha['best_config']}")


if __name__ == "__main__":
    main()

"""Re-train the best tuning trial alone, outside Ray, and compare its validation metric with the recorded one.

    python -m stages.reproduce_best [--tolerance 1e-6]

Reads `models/best/best_config.yaml` (every training knob, the seed included) and `models/best/trial.json` (the
epochs the trial ran, its metric, its torch thread count); trains for exactly those epochs with the same learning
rate schedule (`epoch_limit`), so a trial ASHA stopped early is reproduced as it ran. Exits 1 when the reproduced
best value differs from the recorded one by more than the tolerance (docs/tune.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import yaml

from multimodal.pipeline.params import load_params
from multimodal.pipeline.runtime import go_offline, pick_device, seed_everything, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.io import read_json
from multimodal.training.finetune import train_config
from multimodal.training.train import fit
from multimodal.tuning.params import TUNE
from multimodal.tuning.results import best_of
from multimodal.tuning.trial import prepare_trial

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-6  # on CPU with the trial's thread count the run is bit-identical; on CUDA use ~0.02


def reproduce_best(params: StageParams, best_dir: Path) -> tuple[dict, float]:
    """Train the recorded best config for the recorded epochs; returns (trial record, reproduced best value)."""
    trial = read_json(best_dir / "trial.json")
    values = yaml.safe_load((best_dir / "best_config.yaml").read_text())
    cfg = train_config({**values, "epoch_limit": trial["epochs"]})
    torch.set_num_threads(trial["torch_threads"])
    seed_everything(cfg.seed)
    model, _, train, val = prepare_trial(params, cfg)
    result = fit(model, train, val, cfg, pick_device(params.base.device))
    history = pd.DataFrame([asdict(m) for m in result.history])
    return trial, float(history.loc[best_of(history[trial["metric"]], trial["mode"]), trial["metric"]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest accepted |recorded - reproduced| (default %(default)g)")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(stage="tune", schema=TUNE)  # it re-trains a trial of the tune stage
    go_offline()  # as the tune stage: every model is built from align's saved weights
    trial, reproduced = reproduce_best(params, Path(params.base.paths.models) / "best")
    gap = abs(reproduced - trial["value"])
    verdict = "reproduced" if gap <= args.tolerance else "NOT reproduced"
    print(f"trial {trial['trial']} ({trial['epochs']} epochs): recorded {trial['metric']} {trial['value']:.6f}, "
          f"reproduced {reproduced:.6f}, |diff| {gap:.2g} (tolerance {args.tolerance:g}): {verdict}")
    if gap > args.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Stage `tune`: Ray Tune + ASHA over params `tune.space`; writes the best model, trial table, unimodal baselines."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml

from multimodal.config import Params, load_params
from multimodal.finetune import finetune, train_config
from multimodal.io import atomic_dir, write_json, write_text_atomic
from multimodal.model import save_model
from multimodal.runtime import go_offline_for, pick_device, seed_everything, setup_logging
from multimodal.splits import load_labels, load_splits
from multimodal.tune import run_search

logger = logging.getLogger(__name__)


def trial_number(result) -> str | None:
    """The trial's sequence number ("00004"); Ray's trial id adds a random per-study prefix ("f1e41_00004")."""
    trial_id = result.metrics.get("trial_id") if result.metrics else None
    if trial_id:
        return trial_id.rsplit("_", 1)[-1]
    # A trial that failed before reporting has no metrics; its folder is named `<trainable>_<id>_<n>_<params>`.
    match = re.search(r"_[0-9a-f]{5}_(\d{5})_", Path(result.path).name) if result.path else None
    return match.group(1) if match else None


def trial_table(results, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, in trial order: its config, seed, status, epochs run and best metric."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        has = history is not None and metric in history
        best = (history[metric].max() if mode == "max" else history[metric].min()) if has else None
        rows.append({
            "trial": trial_number(result),
            **{f"config.{k}": v for k, v in result.config.items()},
            "seed": result.metrics.get("seed") if result.metrics else None,
            "status": "error" if result.error else "ok",
            "epochs": int(history["epoch"].max()) if has else 0,
            metric: best,
            "error": str(result.error).splitlines()[0] if result.error else "",
        })
    return pd.DataFrame(rows).sort_values("trial", ignore_index=True)


def tune(params: Params, project_dir: Path) -> dict:
    paths, cfg = params.base.paths, params.tune
    storage = project_dir / ".ray" / "results"
    shutil.rmtree(storage / "tune", ignore_errors=True)  # a fresh study each run; DVC versions the outputs
    # 1. The search.
    results = run_search(params, project_dir, storage)
    table = trial_table(results, cfg.metric, cfg.mode)
    ok = [r for r in results if not r.error and r.checkpoint is not None]
    if not ok:
        raise SystemExit(f"tune: no trial succeeded; errors:\n{table[['trial', 'error']].to_string()}")
    best = results.get_best_result(cfg.metric, cfg.mode, scope="all")
    best_config = {**cfg.fixed.model_dump(), **best.config}
    # 2. Unimodal baselines with the best hyperparameters, through the same loop.
    data = load_splits(params, ("train", "val"))
    labels = load_labels(params)
    device = pick_device(params.base.device)
    train_cfg = train_config({**best_config, "seed": params.base.seed, "max_epochs": cfg.asha.max_epochs})
    best_row = table[table["trial"] == trial_number(best)]
    metrics = {"best_" + cfg.metric: float(best_row[cfg.metric].iloc[0]), "best_trial": trial_number(best),
               "trials": len(table), "trials_failed": int((table["status"] == "error").sum())}
    with atomic_dir(Path(paths.models)) as tmp:
        with best.checkpoint.as_directory() as ckpt:
            shutil.copytree(ckpt, tmp / "best")
        write_text_atomic(tmp / "best" / "best_config.yaml", yaml.safe_dump(best_config, sort_keys=True))
        for modality in data["train"].modalities:
            model, spec, fit_result = finetune(Path(paths.aligned), labels, data["train"], data["val"],
                                               train_cfg, device, [modality])
            save_model(model, spec, tmp / "unimodal" / modality)
            metrics[f"unimodal/{modality}/val_accuracy"] = fit_result.best.val_accuracy
    Path(paths.metrics).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(paths.metrics) / "tune_trials.csv", index=False)
    write_json(Path(paths.metrics) / "tune.json", metrics)
    logger.info("best config %s -> %s", best_config, metrics)
    return metrics


def main() -> None:
    setup_logging()
    params = load_params()
    go_offline_for(params.modalities)
    seed_everything(params.base.seed)
    try:
        tune(params, Path.cwd())
    finally:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()

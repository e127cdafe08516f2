"""Stage `tune`: Ray Tune over params `tune`; writes the best model, the trial tables and plots, unimodal baselines."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import yaml

from multimodal.models.bundle import bundle_inputs
from multimodal.pipeline.params import load_params
from multimodal.pipeline.runtime import go_offline, pick_device, seed_everything, setup_logging
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.io import atomic_dir, write_csv_atomic, write_json, write_text_atomic
from multimodal.training.calibrate import calibrate_saved
from multimodal.training.load_data import load_splits
from multimodal.tuning.params import TUNE
from multimodal.tuning.references import ReferencePlan, write_reference
from multimodal.tuning.results import best_checkpoint, best_trial, epochs_table, trial_number, trial_table, write_plots
from multimodal.tuning.search import end_study, run_search
from multimodal.tuning.trial import trial_train_config

logger = logging.getLogger(__name__)

PARAMS = TUNE  # kept in the library: each Ray trial loads the stage's params again


START_OVER = "dvc repro tune"  # after a run that ended, the stage's next run starts a fresh study


def no_trial_succeeded(table: pd.DataFrame) -> SystemExit:
    return SystemExit(f"tune: no trial succeeded; errors:\n{table[['trial', 'error']].to_string(index=False)}\n"
                      f"This study is closed: the next run starts a fresh one. Fix the cause above (one that passes, "
                      f"such as a lost node or an out-of-memory kill, needs no fix), then run: {START_OVER}")


def write_best(result, row: pd.Series, params: StageParams, out: Path) -> dict:
    """models/best: the best checkpoint's model, the config it trained with, and what `reproduce_best` needs."""
    cfg = params.tune
    checkpoint = best_checkpoint(result, cfg.metric, cfg.mode)
    with checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / "model", out)
    train_cfg = trial_train_config(params, result.config)
    write_text_atomic(out / "best_config.yaml", yaml.safe_dump(asdict(train_cfg), sort_keys=True))
    trial = {"trial": row["trial"], "epochs": int(row["epochs"]), "best_epoch": int(row["best_epoch"]),
             "metric": cfg.metric, "mode": cfg.mode, "value": float(row[cfg.metric]),
             "torch_threads": max(1, int(cfg.cpus_per_trial))}
    write_json(out / "trial.json", trial)
    return trial


def top_trials(table: pd.DataFrame, metric: str, mode: str, k: int) -> list[str]:
    """The `k` best successful trials' numbers, best first (ties: the lower number), as `best_trial` ranks them."""
    ok = table[(table["status"] == "ok") & table[metric].notna()]
    ranked = ok.assign(_v=ok[metric].astype(float)).sort_values(["_v", "trial"], ascending=[mode == "min", True])
    return ranked["trial"].head(k).tolist()


def write_trial_model(result, params: StageParams, out: Path) -> None:
    """A trial's best kept checkpoint's model (an ensemble candidate), with what predict needs beside it."""
    checkpoint = best_checkpoint(result, params.tune.metric, params.tune.mode)
    if checkpoint is None:  # Ray kept none with the metric: nothing to offer
        logger.warning("trial %s kept no checkpoint with %s: not an ensemble candidate", trial_number(result),
                       params.tune.metric)
        return
    with checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / "model", out)
    bundle_inputs(Path(params.base.paths.aligned), out)


def calibrate_all(model_dirs: list[Path], params: StageParams) -> None:
    """`temperature.json` in each of `model_dirs`: one forward pass over the validation rows per model."""
    val = load_splits(params, ("val",))["val"]
    device = pick_device(params.base.device)
    for model_dir in model_dirs:
        calibrate_saved(model_dir, val, Path(params.base.paths.aligned), params.tune.fixed.batch_size, device)


def tune(params: StageParams, project_dir: Path) -> dict:
    paths, cfg = params.base.paths, params.tune
    storage = project_dir / ".ray" / "results"
    # 1. The search (an interrupted one of the same inputs resumes). Failed trials are rows of the table; only a
    # study without a success fails the stage. The unimodal references start during it once its best trial is
    # certain (multimodal.tuning.early_references), else after it.
    started = time.monotonic()
    references = ReferencePlan(params, list(params.preprocess.modalities), project_dir)
    results = run_search(params, project_dir, storage, references)
    table, epochs = trial_table(results, cfg.metric, cfg.mode), epochs_table(results)
    logger.info("search: %d trials, %d epochs in %.0f s", len(table), len(epochs), time.monotonic() - started)
    best_row = best_trial(table, cfg.metric, cfg.mode)
    if best_row is None:
        end_study(storage, f"no trial succeeded of {len(table)}")
        raise no_trial_succeeded(table)
    best = next(r for r in results if trial_number(r) == best_row["trial"])
    metrics = {"best_" + cfg.metric: float(best_row[cfg.metric]), "best_trial": best_row["trial"],
               "best_epoch": int(best_row["best_epoch"]), "trials": len(table),
               "trials_failed": int((table["status"] == "error").sum())}
    # 2. The best model, and unimodal references with its hyperparameters through the same loop: one Ray task per
    # modality, in parallel where the cluster has room (multimodal.tuning.references).
    baseline_cfg = trial_train_config(params, best.config)
    unimodal = references.collect(best_row["trial"], asdict(baseline_cfg))
    with atomic_dir(Path(paths.models)) as tmp:
        write_best(best, best_row, params, tmp / "best")
        bundle_inputs(Path(paths.aligned), tmp / "best")
        for modality, reference in unimodal.items():
            write_reference(reference, tmp / "unimodal" / modality)
            bundle_inputs(Path(paths.aligned), tmp / "unimodal" / modality)
            metrics[f"unimodal/{modality}/val_accuracy"] = reference.val_accuracy
            write_json(tmp / "unimodal" / modality / "reference.json",
                       {"candidate": reference.candidate, "knobs": reference.knobs, "epochs": reference.epochs,
                        "val_accuracy": reference.val_accuracy, "selected_on": f"val rows holding {modality}"})
        # The next best trials' models: candidates of ensemble selection (stage `ensemble`).
        (tmp / "trials").mkdir()
        for number in top_trials(table, cfg.metric, cfg.mode, cfg.top_k)[1:]:
            write_trial_model(next(r for r in results if trial_number(r) == number), params, tmp / "trials" / number)
        # Each saved model's temperature, fitted on the validation rows it sees (multimodal.training.calibrate).
        trial_dirs = sorted(d for d in (tmp / "trials").iterdir() if d.is_dir())
        calibrate_all([tmp / "best", *(tmp / "unimodal" / m for m in unimodal), *trial_dirs], params)
    # 3. Tables, plots and metrics DVC declares.
    write_csv_atomic(Path(paths.metrics) / "tune_trials.csv", table)
    write_csv_atomic(Path(paths.metrics) / "tune_epochs.csv", epochs)
    with atomic_dir(Path(paths.plots) / "tune") as tmp:
        write_plots(table, epochs, cfg.space, cfg.metric, tmp)
    write_json(Path(paths.metrics) / "tune.json", metrics, sort_keys=False)  # the selecting metric first
    # 4. The outcome is delivered: a later run of the same inputs (`dvc repro --force`) starts a fresh study. A run
    # cut off before this point (killed, out of memory) leaves the study open for the next run to continue.
    end_study(storage, f"best trial {best_row['trial']}")
    logger.info("best trial %s -> %s", best_row["trial"], metrics)
    return metrics


def main() -> None:
    setup_logging()
    params = load_params(stage="tune", schema=PARAMS)
    go_offline()  # trials build every model from align's saved weights: no hub access
    seed_everything(params.base.seed)
    try:
        tune(params, Path.cwd())
    finally:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()

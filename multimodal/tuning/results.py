"""What a Ray Tune study leaves behind, as deterministic tables and plots (trial numbers, not Ray's random ids).

The last step of the tune story (`multimodal.training.train` has it whole): `tune` ran the trials, this reads them.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.tuning.ray_private import config_on_disk, number_of_trial_folder, number_of_trial_id

EPOCH_COLUMNS = ("val_accuracy", "val_loss", "train_loss")  # what each trial reports per epoch
CHECKPOINT_STATE = "state"  # a trial checkpoint's training-state folder (beside `model`)


def plain(value: Any) -> Any:
    """numpy scalars from samplers -> Python values (YAML, JSON and dataclasses want those)."""
    return value.item() if hasattr(value, "item") else value


def trial_number(result) -> str | None:
    """The sequence number of a result's trial ("00004"; `ray_private.number_of_trial_id`)."""
    trial_id = result.metrics.get("trial_id") if result.metrics else None
    if trial_id:
        return number_of_trial_id(trial_id)
    # A trial that failed before reporting has no metrics; its folder's name holds the number.
    return number_of_trial_folder(Path(result.path).name) if result.path else None


def trial_config(result) -> dict[str, Any]:
    """The config a result's trial ran with. A result restored from an errored trial that never reported has none
    of its own (Ray keeps it in the trial's folder)."""
    config = result.config
    if config is None and result.path:
        config = config_on_disk(Path(result.path))
    if config is None:
        raise ValueError(f"tune: Ray recorded no config for the trial in {result.path}: the study there is damaged; "
                         "remove it to start a fresh one, then `dvc repro tune`")
    return config


def error_message(error: BaseException | None) -> str:
    """The root cause in one line ("ValueError: Invalid learning rate: -1.0"), free of pids and hosts."""
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError wraps it
        cause = cause.cause
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip()


def checkpoint_history(result) -> pd.DataFrame:
    """The epochs the trial's latest checkpoint records: its whole history, also across a retry.

    Ray's result file of a retried trial can lack the epochs before the failure (on a retry it copies back the
    last synced copy), but the training state the trial resumed from carries them.
    """
    from multimodal.storage.io import read_json
    from multimodal.training.train import STATE_JSON

    if result.checkpoint is None:
        return pd.DataFrame(columns=["epoch", *EPOCH_COLUMNS])
    with result.checkpoint.as_directory() as directory:
        state = Path(directory) / CHECKPOINT_STATE / STATE_JSON
        history = read_json(state)["history"] if state.exists() else []
    return pd.DataFrame(history, columns=["epoch", *EPOCH_COLUMNS])


def epochs_of(result) -> pd.DataFrame:
    """A trial's per-epoch metrics, one row per epoch (a retried trial may have re-reported one)."""
    reported = result.metrics_dataframe
    frames = [checkpoint_history(result)]
    if reported is not None and "epoch" in reported:
        frames.insert(0, reported[["epoch", *[c for c in EPOCH_COLUMNS if c in reported]]])
    history = pd.concat([f for f in frames if len(f)] or frames[-1:], ignore_index=True)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)


def best_of(values: pd.Series, mode: str) -> Any:
    """Position of the best value; ties go to the first (the earliest epoch, the lowest trial number)."""
    return values.idxmax() if mode == "max" else values.idxmin()


def epochs_table(results) -> pd.DataFrame:
    """Long form: trial, epoch, val_accuracy, val_loss, train_loss; sorted by trial then epoch."""
    frames = [epochs_of(r).assign(trial=trial_number(r)) for r in results]
    table = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=["trial", "epoch", *EPOCH_COLUMNS])])
    table = table[["trial", "epoch", *EPOCH_COLUMNS]]
    return table.astype({"epoch": int}).sort_values(["trial", "epoch"], ignore_index=True)


def trial_table(results, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, in trial order: its config, seed, status, error, epochs run, best metric and epoch."""
    rows = []
    for result in results:
        history = epochs_of(result)
        has = metric in history and history[metric].notna().any()
        best = history.loc[best_of(history[metric], mode)] if has else None
        rows.append({
            "trial": trial_number(result),
            **{f"config.{k}": plain(v) for k, v in sorted(trial_config(result).items())},
            "seed": result.metrics.get("seed") if result.metrics else None,
            "status": "error" if result.error else "ok",
            "epochs": int(history["epoch"].max()) if len(history) else 0,
            "best_epoch": int(best["epoch"]) if has else None,
            metric: float(best[metric]) if has else None,
            "error": error_message(result.error),
        })
    return pd.DataFrame(rows).sort_values("trial", ignore_index=True).astype({"seed": "Int64", "best_epoch": "Int64"})


def best_trial(table: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The row of the best successful trial (ties: the lowest trial number), None when none succeeded."""
    ok = table[(table["status"] == "ok") & table[metric].notna()].reset_index(drop=True)
    return ok.loc[best_of(ok[metric].astype(float), mode)] if len(ok) else None


def best_checkpoint(result, metric: str, mode: str):
    """The kept checkpoint with the best metric, the earliest epoch among equals (as `fit` keeps the first best)."""
    sign = -1.0 if mode == "max" else 1.0
    kept = [(c, m) for c, m in result.best_checkpoints if m.get(metric) is not None]
    if not kept:
        return None
    return min(kept, key=lambda item: (sign * item[1][metric], item[1]["epoch"]))[0]


@contextmanager
def _figure(path: Path, size: tuple[float, float]):
    """A headless matplotlib axes, saved to `path` when the block ends.

    No "Software" metadata: the PNG bytes then depend only on the data (DVC hashes them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)


def plot_epochs(epochs: pd.DataFrame, metric: str, path: Path) -> None:
    """`metric` against epoch, one line per trial."""
    with _figure(path, (6, 4)) as ax:
        for trial, rows in epochs.groupby("trial", sort=True):
            ax.plot(rows["epoch"], rows[metric], marker="o", markersize=3, label=f"trial {trial}")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        if len(epochs):
            ax.legend(fontsize="small", ncol=2)


def plot_hyperparameter(table: pd.DataFrame, name: str, kind: str, metric: str, path: Path) -> None:
    """Each trial's best `metric` against its value of hyperparameter `name` (failed trials as crosses)."""
    with _figure(path, (5, 4)) as ax:
        values = table[f"config.{name}"]
        if kind == "choice":
            categories = sorted({str(v) for v in values})
            values = values.map(lambda v: categories.index(str(v)))
            ax.set_xticks(range(len(categories)), categories)
        for status, marker in (("ok", "o"), ("error", "x")):
            rows = table["status"] == status
            ax.scatter(values[rows], table.loc[rows, metric].astype(float), marker=marker, label=status)
        if kind == "loguniform":
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=f"best {metric}", title=f"{metric} vs {name}")
        ax.legend(fontsize="small")


def write_plots(table: pd.DataFrame, epochs: pd.DataFrame, space: dict[str, dict[str, Any]], metric: str,
                out_dir: Path) -> list[Path]:
    """`<metric>_vs_epoch.png` and one `<metric>_vs_<hyperparameter>.png` per searched knob."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{metric}_vs_epoch.png"]
    plot_epochs(epochs, metric, paths[0])
    for name, spec in sorted(space.items()):
        paths.append(out_dir / f"{metric}_vs_{name}.png")
        plot_hyperparameter(table, name, next(iter(spec)), metric, paths[-1])
    return paths

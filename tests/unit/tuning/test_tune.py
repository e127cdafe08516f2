"""Search space, searchers, resource checks, trial tables and plots of the tune stage (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from multimodal.pipeline.params import ParamsError
from multimodal.tuning.params import Tune
from multimodal.tuning.results import best_checkpoint, best_trial, epochs_table, error_message, trial_table, write_plots
from multimodal.tuning.search import build_scheduler, decide_resources, search_algorithm, search_space, trials_at_once
from stages.check_params import load_all
from tests.unit.conftest import params_section, repo_params

REPO = Path(__file__).resolve().parents[3]
SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "dropout": {"uniform": [0.0, 0.5]},
         "fusion": {"choice": ["concat", "gated"]}, "patience": {"randint": [2, 5]}}


def tune_cfg(**overrides) -> Tune:
    """The repo's `tune` section with this module's search space and `overrides`."""
    return params_section("tune", space=SPACE, **overrides)


def write_params(tmp_path: Path, **tune) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"].update(tune)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- search space -----------------------------------------------------------------------------------------------

def test_every_search_kind_samples_inside_its_range() -> None:
    space = search_space(SPACE)
    for _ in range(50):
        assert 1e-4 <= space["lr"].sample() <= 1e-2
        assert 0.0 <= space["dropout"].sample() <= 0.5
        assert space["fusion"].sample() in ("concat", "gated")
        patience = space["patience"].sample()
        assert isinstance(patience, int) and 2 <= patience < 5  # randint: high excluded, as Ray's


@pytest.mark.parametrize("entry, message", [
    ({"loguniform": [0.0, 1e-2]}, "loguniform needs low > 0"),
    ({"uniform": [0.5, 0.1]}, "needs low < high"),
    ({"randint": [1.5, 4]}, "randint needs integers"),
    ({"choice": []}, "choice needs a non-empty list"),
    ({"uniform": [0.1]}, "needs [low, high]"),
])
def test_bad_space_entries_are_reported_with_their_key(tmp_path, entry, message) -> None:
    path = write_params(tmp_path, space={"dropout": entry})
    with pytest.raises(ParamsError) as err:
        load_all(path)
    assert "tune.space.dropout" in str(err.value) and message in str(err.value)


def test_our_own_rules_are_reported_together_with_their_keys(tmp_path) -> None:
    """Beyond the types: a GPU count that is neither a fraction nor whole, and a mode against the metric."""
    path = write_params(tmp_path, metric="val_loss", mode="max", gpus_per_trial=1.5)
    with pytest.raises(ParamsError) as err:
        load_all(path)
    message = str(err.value)
    assert "tune.gpus_per_trial" in message and "a fraction of one GPU or whole GPUs, got 1.5" in message
    assert "tune.mode" in message and "val_loss is better lower, so tune.mode must be 'min', not 'max'" in message
    load_all(write_params(tmp_path, metric="val_loss", mode="min", gpus_per_trial=2))  # both fine this way


def test_the_committed_space_samples_into_trial_configs() -> None:
    """Each sample of the committed `tune.space` is a training config (no knob unknown to `TrainConfig`)."""
    from multimodal.tuning.trial import trial_train_config

    params = repo_params()
    space = search_space(params.tune.space)
    for _ in range(5):
        sample = {name: domain.sample() for name, domain in space.items()}
        cfg = trial_train_config(params, sample)
        for name, value in sample.items():
            got = cfg
            for part in name.split("."):  # `augment.audio.time_mask`: one entry of a nested knob
                got = got[part] if isinstance(got, dict) else getattr(got, part)
            assert got == value, name


def test_a_trial_config_is_the_params_plus_its_sample() -> None:
    """Every knob a trial trains with comes from params or the sample: none from a code default."""
    from dataclasses import asdict

    from multimodal.training.finetune import train_config
    from multimodal.tuning.trial import trial_train_config

    params = repo_params()
    cfg = trial_train_config(params, {"lr": 0.003, "fusion": "tensor", "dropout": 0.2, "patience": 7})
    values, fixed = asdict(cfg), params.tune.fixed.model_dump()
    assert {k: values[k] for k in fixed if k != "patience"} == {k: v for k, v in fixed.items() if k != "patience"}
    assert (cfg.lr, cfg.fusion, cfg.dropout, cfg.patience) == (0.003, "tensor", 0.2, 7)
    assert (cfg.seed, cfg.max_epochs, cfg.epoch_limit) == (params.base.seed, params.tune.asha.max_epochs, None)
    with pytest.raises(ValueError, match=r"missing \['dropout', 'tensor_rank'\]"):
        train_config({k: v for k, v in values.items() if k not in ("dropout", "tensor_rank")})


# --- searchers --------------------------------------------------------------------------------------------------

def suggestions(cfg: Tune, seed: int, n: int) -> list[dict]:
    searcher = search_algorithm(cfg, seed)
    assert searcher.set_search_properties("val_accuracy", "max", search_space(cfg.space))
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_optuna_search_is_seeded_and_limited_to_max_concurrent() -> None:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    cfg = tune_cfg(search="optuna", max_concurrent_trials=2)
    searcher = search_algorithm(cfg, 7)
    assert isinstance(searcher, ConcurrencyLimiter) and isinstance(searcher.searcher, OptunaSearch)
    assert searcher.max_concurrent == 2
    first = suggestions(cfg, 7, 2)
    assert first == suggestions(cfg, 7, 2) != suggestions(cfg, 8, 2)
    assert {"lr", "dropout", "fusion", "patience"} == set(first[0])
    assert isinstance(first[0]["patience"], int) and 2 <= first[0]["patience"] < 5
    # A third trial waits until one of the two running trials completes.
    limited = search_algorithm(cfg, 7)
    limited.set_search_properties("val_accuracy", "max", search_space(cfg.space))
    assert limited.suggest("a") and limited.suggest("b") and limited.suggest("c") is None


def test_random_search_is_the_seeded_basic_generator() -> None:
    from ray.tune.search import BasicVariantGenerator

    searcher = search_algorithm(tune_cfg(max_concurrent_trials=3), 42)
    assert isinstance(searcher, BasicVariantGenerator) and searcher.max_concurrent == 3


# --- resources --------------------------------------------------------------------------------------------------

CPU_NODE = {"CPU": 2.0, "memory": 1e9}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def test_cpu_trials_on_a_cpu_cluster() -> None:
    assert decide_resources(tune_cfg(cpus_per_trial=2), "auto", [CPU_NODE]) == {"cpu": 2, "gpu": 0.0}


def test_too_many_cpus_names_the_key_and_what_the_cluster_has() -> None:
    with pytest.raises(RuntimeError) as err:
        decide_resources(tune_cfg(cpus_per_trial=64), "auto", [CPU_NODE, CPU_NODE])
    message = str(err.value)
    assert "tune.cpus_per_trial=64" in message and "at most 2 CPUs" in message and "in all 4 CPUs" in message


def test_a_gpu_fraction_shares_a_gpu() -> None:
    assert decide_resources(tune_cfg(cpus_per_trial=2, gpus_per_trial=0.25), "auto", [GPU_NODE]) == \
        {"cpu": 2, "gpu": 0.25}


def test_impossible_gpu_requests_fail() -> None:
    with pytest.raises(RuntimeError, match=r"tune\.gpus_per_trial=2 .*at most 8 CPUs and 1 GPUs"):
        decide_resources(tune_cfg(cpus_per_trial=1, gpus_per_trial=2), "auto", [GPU_NODE])
    with pytest.raises(RuntimeError, match=r"base\.device=cuda .*0 GPUs"):
        decide_resources(tune_cfg(cpus_per_trial=1), "cuda", [CPU_NODE])


def test_cpu_device_leaves_gpus_alone() -> None:
    assert decide_resources(tune_cfg(cpus_per_trial=1), "cpu", [GPU_NODE]) == {"cpu": 1, "gpu": 0.0}


@pytest.mark.parametrize("scheduler", ["asha", "fifo"])
def test_workers_per_trial_works_with_either_scheduler(tmp_path, scheduler) -> None:
    """What `run_search` hands the Tuner, built for a study of 2-worker trials (ASHA once refused several workers
    per trial: their resources leaked)."""
    from ray.tune.schedulers import FIFOScheduler

    from multimodal.tuning.ray_private import asha_rungs, asha_settings
    from multimodal.tuning.resume import ResumableASHA

    cfg = tune_cfg(workers_per_trial=2, scheduler=scheduler, max_concurrent_trials=2,
                   asha={"max_epochs": 8, "grace_period": 2, "reduction_factor": 2})
    built = build_scheduler(cfg, tmp_path / "tune")
    assert built.set_search_properties(cfg.metric, cfg.mode)  # as the Tuner sets them
    if scheduler == "asha":
        assert isinstance(built, ResumableASHA) and built._study == str(tmp_path / "tune")
        asha = asha_settings(built)
        assert (asha.time_attr, asha.max_t, asha.brackets) == ("epoch", 8, 1) and asha_rungs(built) == [2, 4, 8]
    else:
        assert type(built) is FIFOScheduler
    searcher = search_algorithm(cfg, 42)
    assert searcher.max_concurrent == 2
    assert not (tmp_path / "tune").exists()  # building writes nothing: a fresh study starts empty


def test_workers_of_a_trial_may_span_nodes_but_must_fit_at_once() -> None:
    # Per worker: 2 workers of 2 CPUs need both 2-CPU nodes; 3 do not fit, and the error says so.
    two_nodes = [CPU_NODE] * 2
    assert decide_resources(tune_cfg(cpus_per_trial=2, workers_per_trial=2), "cpu", two_nodes) == {"cpu": 2, "gpu": 0}
    assert decide_resources(tune_cfg(cpus_per_trial=1, workers_per_trial=4), "cpu", two_nodes) == {"cpu": 1, "gpu": 0}
    with pytest.raises(RuntimeError, match=r"tune\.workers_per_trial=3 workers of 2 CPUs each .*2 fit at once"):
        decide_resources(tune_cfg(cpus_per_trial=2, workers_per_trial=3), "cpu", [CPU_NODE, CPU_NODE])
    # GPUs: one per worker, never a shared fraction (NCCL needs a device per rank).
    with pytest.raises(RuntimeError, match=r"tune\.workers_per_trial=2 workers of 1 CPUs and 1 GPUs each"):
        decide_resources(tune_cfg(cpus_per_trial=1, gpus_per_trial=1, workers_per_trial=2), "auto", [GPU_NODE])
    with pytest.raises(RuntimeError, match=r"tune\.gpus_per_trial=0\.5 with tune\.workers_per_trial=2"):
        decide_resources(tune_cfg(cpus_per_trial=1, gpus_per_trial=0.5, workers_per_trial=2), "auto", [GPU_NODE])


# --- trial tables -----------------------------------------------------------------------------------------------

class FakeError(Exception):
    """Ray's RayTaskError keeps the trial's own exception as `.cause`."""

    def __init__(self, cause):
        super().__init__("ray::ImplicitFunc.train() (pid=123, ip=10.0.0.1)\n  traceback...")
        self.cause = cause


def fake_result(n: int, config: dict, epochs: list[tuple], error=None, checkpoints=(),
                checkpoint=None) -> SimpleNamespace:
    history = pd.DataFrame(epochs, columns=["epoch", "val_accuracy", "val_loss", "train_loss"]) if epochs else None
    metrics = {"trial_id": f"ab12c_{n:05d}", "seed": 42} if epochs else {}
    return SimpleNamespace(metrics=metrics, metrics_dataframe=history, config=config, error=error,
                           path=f"/r/tune/run_trial_ab12c_{n:05d}_{n}_lr=0.1", best_checkpoints=list(checkpoints),
                           checkpoint=checkpoint)


def results() -> list[SimpleNamespace]:
    return [
        # Listed out of order, as Ray may; retried trial 2 re-reported epoch 2.
        fake_result(2, {"lr": 0.01, "fusion": "gated"},
                    [(1, 0.5, 1.0, 1.2), (2, 0.7, 0.8, 1.0), (2, 0.7, 0.8, 1.0), (3, 0.7, 0.7, 0.9)]),
        fake_result(0, {"lr": 0.001, "fusion": "concat"}, [(1, 0.4, 1.1, 1.3), (2, 0.6, 0.9, 1.1)]),
        fake_result(1, {"lr": -1.0, "fusion": "concat"}, [],
                    error=FakeError(ValueError("Invalid learning rate: -1.0"))),
    ]


def test_trial_table_is_in_trial_order_with_status_error_epochs_and_best() -> None:
    table = trial_table(results(), "val_accuracy", "max")
    assert list(table["trial"]) == ["00000", "00001", "00002"]
    assert list(table.columns) == ["trial", "config.fusion", "config.lr", "seed", "status", "epochs", "best_epoch",
                                   "val_accuracy", "error"]
    assert list(table["status"]) == ["ok", "error", "ok"]
    assert table.loc[1, "error"] == "ValueError: Invalid learning rate: -1.0"
    assert list(table["epochs"]) == [2, 0, 3]
    assert table.loc[2, "best_epoch"] == 2 and table.loc[2, "val_accuracy"] == 0.7  # ties: the first epoch
    assert best_trial(table, "val_accuracy", "max")["trial"] == "00002"
    assert best_trial(trial_table(results(), "val_loss", "min"), "val_loss", "min")["trial"] == "00002"


def test_epochs_table_is_long_form_without_duplicates() -> None:
    epochs = epochs_table(results())
    assert list(epochs.columns) == ["trial", "epoch", "val_accuracy", "val_loss", "train_loss"]
    assert list(zip(epochs["trial"], epochs["epoch"])) == [("00000", 1), ("00000", 2), ("00002", 1),
                                                           ("00002", 2), ("00002", 3)]


def test_epochs_before_a_retry_come_from_the_checkpoint_when_ray_lost_them(tmp_path) -> None:
    from ray.tune import Checkpoint

    from multimodal.storage.io import write_json
    from multimodal.training.train import STATE_JSON
    from multimodal.tuning.results import CHECKPOINT_STATE

    # Ray's result file after the retry holds epochs 2-3 only; the state the trial resumed from holds epochs 1-2.
    history = [{"epoch": e, "train_loss": 1.3 - e / 10, "val_loss": 1.1 - e / 10, "val_accuracy": 0.3 + e / 10,
                "improved": True} for e in (1, 2)]
    write_json(tmp_path / CHECKPOINT_STATE / STATE_JSON, {"epoch": 2, "history": history})
    result = fake_result(0, {"lr": 0.001}, [(2, 0.5, 0.9, 1.1), (3, 0.6, 0.8, 1.0)],
                         checkpoint=Checkpoint.from_directory(str(tmp_path)))
    table = epochs_table([result])
    assert table["epoch"].tolist() == [1, 2, 3]
    assert table["val_accuracy"].tolist() == pytest.approx([0.4, 0.5, 0.6])


def test_no_success_means_no_best_trial() -> None:
    table = trial_table([results()[2]], "val_accuracy", "max")
    assert best_trial(table, "val_accuracy", "max") is None


def test_a_restored_errored_trial_that_never_reported_keeps_its_config(tmp_path) -> None:
    """Restored by `Tuner.restore`, a trial that errored before its first report has no metrics, hence no config
    (`Result.config` is None); the table takes it from the trial's folder, where Ray keeps it."""
    from ray.tune import Result

    folder = tmp_path / "run_trial_ab12c_00001_1_lr=-1.0"
    folder.mkdir()
    (folder / "params.json").write_text('{"lr": -1.0, "fusion": "concat"}')
    restored = Result(metrics={}, checkpoint=None, error=FakeError(ValueError("Invalid learning rate: -1.0")),
                      path=str(folder))
    assert restored.config is None
    table = trial_table([results()[1], restored], "val_accuracy", "max")
    assert table.loc[1, ["trial", "config.lr", "config.fusion", "status"]].tolist() == ["00001", -1.0, "concat",
                                                                                       "error"]


def test_error_message_without_a_cause() -> None:
    assert error_message(None) == ""
    assert error_message(RuntimeError("first\nlast line")) == "RuntimeError: last line"


def test_best_checkpoint_prefers_the_earliest_of_equal_scores() -> None:
    kept = [("c3", {"epoch": 3, "val_accuracy": 0.7}), ("c2", {"epoch": 2, "val_accuracy": 0.7}),
            ("c1", {"epoch": 1, "val_accuracy": 0.5})]
    assert best_checkpoint(SimpleNamespace(best_checkpoints=kept), "val_accuracy", "max") == "c2"
    assert best_checkpoint(SimpleNamespace(best_checkpoints=kept), "val_accuracy", "min") == "c1"


def test_plots_are_written_and_deterministic(tmp_path) -> None:
    table, epochs = trial_table(results(), "val_accuracy", "max"), epochs_table(results())
    space = {"lr": {"loguniform": [1e-4, 1e-2]}, "fusion": {"choice": ["concat", "gated"]}}
    first = write_plots(table, epochs, space, "val_accuracy", tmp_path / "a")
    second = write_plots(table, epochs, space, "val_accuracy", tmp_path / "b")
    assert [p.name for p in first] == ["val_accuracy_vs_epoch.png", "val_accuracy_vs_fusion.png",
                                       "val_accuracy_vs_lr.png"]
    for a, b in zip(first, second):
        assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and a.read_bytes() == b.read_bytes()


def test_trials_on_workers_run_only_as_many_at_once_as_their_workers_fit() -> None:
    # Two 2-worker trials on a 2-CPU node would each hold a driver and wait for the other's workers: a hang.
    each = {"cpu": 1, "gpu": 0.0}
    assert trials_at_once(tune_cfg(workers_per_trial=2, max_concurrent_trials=2), each, [CPU_NODE]) == \
        max(1, min(2, int(CPU_NODE["CPU"]) // 2))
    assert trials_at_once(tune_cfg(workers_per_trial=2, max_concurrent_trials=2), each, [{"CPU": 4.0}]) == 2
    assert trials_at_once(tune_cfg(workers_per_trial=4, max_concurrent_trials=3), each, [{"CPU": 2.0}] * 2) == 1
    # One-process trials queue in Tune instead: their setting stands.
    assert trials_at_once(tune_cfg(max_concurrent_trials=3), each, [{"CPU": 2.0}]) == 3

"""`fit` data-parallel over two gloo processes ends where one process does: each rank trains on its share of every
batch, the gradients are summed with the right weights, and the ranks agree on metrics and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from multimodal.models.model import ModelSpec, build_model
from multimodal.training.data_parallel import DataParallel
from multimodal.training.train import fit, predict
from tests.unit.conftest import knobs, synthetic_split, train_config

CPU = torch.device("cpu")
FUSIONS = ("concat", "attention")
TOLERANCE = 1e-5  # max |weight difference| after 3 epochs: float summation order is all that differs
# Attention's key bias does not change any output (softmax ignores a shift shared by all keys): its gradient is zero
# up to rounding, and AdamW turns rounding noise into steps of about lr. Compared through the outputs instead.
NO_EFFECT = "self_attn.in_proj_bias"
# 101 rows in batches of 15: the last batch (11 rows) splits 6/5, and grad accumulation over 2 batches leaves a
# short last group; 30% of each modality missing and modality dropout (drawn for the whole batch) on.
N_TRAIN, BATCH = 101, 15


def case(fusion: str):
    torch.manual_seed(0)
    spec = ModelSpec(["a", "b"], {"a": {"features": 8}, "b": {"features": 8}}, ["x", "y", "z"], dim=16,
                     fusion=fusion, dropout=0.0, fusion_knobs=knobs(fusion), input_norm={})
    cfg = train_config(lr=5e-3, fusion=fusion, dropout=0.0, modality_dropout=0.3, batch_size=BATCH,
                       grad_accum_steps=2, max_epochs=3, patience=3, seed=7, augment_strength=0.0)
    model = build_model(spec)
    rows = []  # rows of each training forward pass: each rank must see only its share
    model.register_forward_pre_hook(lambda module, args: rows.append(len(args[1]["a"])) if module.training else None)
    return model, synthetic_split(N_TRAIN, missing=0.3, seed=0), synthetic_split(37, missing=0.2, seed=1), cfg, rows


def run(fusion: str) -> tuple[dict[str, torch.Tensor], list[dict], list[int]]:
    model, train, val, cfg, rows = case(fusion)
    result = fit(model, train, val, cfg, CPU)
    history = [{"train_loss": m.train_loss, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy}
                for m in result.history]
    return model.state_dict(), history, rows


def comparable(name: str, weights: torch.Tensor) -> torch.Tensor:
    """The weights that change what the model computes (without attention's key bias)."""
    if not name.endswith(NO_EFFECT):
        return weights
    dim = len(weights) // 3  # query, key, value biases
    return torch.cat([weights[:dim], weights[2 * dim:]])


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for fusion in FUSIONS:
            state, history, rows = run(fusion)
            save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/{fusion}-{rank}.safetensors")
            Path(f"{out}/{fusion}-{rank}.json").write_text(json.dumps({"history": history, "rows": rows}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_processes_end_with_the_weights_of_one(two_processes: Path, single_thread, fusion: str) -> None:
    state, history, rows = run(fusion)
    ranks = [load_file(str(two_processes / f"{fusion}-{r}.safetensors")) for r in range(2)]
    logs = [json.loads((two_processes / f"{fusion}-{r}.json").read_text()) for r in range(2)]
    # Each rank trained on its share of every batch (rank 0 takes the extra row of an odd batch).
    batches = [min(BATCH, N_TRAIN - start) for start in range(0, N_TRAIN, BATCH)] * 3
    assert rows == batches
    assert logs[0]["rows"] == [(n + 1) // 2 for n in batches] and logs[1]["rows"] == [n // 2 for n in batches]
    # The ranks hold the same model, and it is the one-process model up to summation order.
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in state)
    worst = max((comparable(k, ranks[0][k]) - comparable(k, state[k])).abs().max().item() for k in state)
    assert worst <= TOLERANCE, f"max weight difference {worst:.2e}"
    outputs = []
    for weights in (state, ranks[0]):
        model, _, val, _, _ = case(fusion)
        model.load_state_dict(weights)
        outputs.append(predict(model, val, 64, CPU))
    assert (outputs[0] - outputs[1]).abs().max().item() <= TOLERANCE
    assert logs[0]["history"] == logs[1]["history"]
    for mine, theirs in zip(history, logs[0]["history"], strict=True):
        assert theirs["val_accuracy"] == mine["val_accuracy"]
        assert theirs["val_loss"] == pytest.approx(mine["val_loss"], abs=TOLERANCE)
        assert theirs["train_loss"] == pytest.approx(mine["train_loss"], abs=TOLERANCE)
    print(f"{fusion}: max weight difference 2 processes vs 1: {worst:.2e}")


def test_no_process_group_is_the_single_process_path() -> None:
    assert DataParallel.current() is None
    assert [DataParallel(r, 2).share(5).tolist() for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert DataParallel(1, 2).share(1).tolist() == []

"""One training epoch of a trial, part by part, against its compute floor (forward + backward + step of the same
batches already in memory), in this process, as a trial trains (its torch threads, its config).

    python bench/epoch_floor.py --project DIR [--fusion gated --lr 0.002 --dropout 0.2] [--repeats 3]

DIR is a reproduced project (align's outputs and the shards present); its params.yaml gives the fixed knobs, the
searched ones come from the flags. Each part is timed `repeats` times, median printed:
- read: iterate the epoch's shuffled batches (lazy shard reads -> tensors), nothing else;
- augment: the same plus the training augmentation;
- floor: forward + backward + clip + AdamW step over batches read and augmented beforehand (pure compute);
- epoch: `fit` for one epoch, validation pass included, as a trial runs it (its checkpoint excluded: see next);
- validation: the validation pass alone; checkpoint: the state + model a trial writes each epoch.
The ratio epoch / floor is the issue's "a training epoch within 1.5x of its pure compute".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multimodal.models.model import save_model  # noqa: E402
from multimodal.pipeline.params import load_params  # noqa: E402
from multimodal.training.augment import Augmenter  # noqa: E402
from multimodal.training.train import TrainingState, _val_metrics, drop_modalities, fit, rows_with_inputs  # noqa: E402
from multimodal.tuning.params import TUNE  # noqa: E402
from multimodal.tuning.trial import prepare_trial, trial_train_config  # noqa: E402


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--fusion", default="gated")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--strategy", help="tune.fixed.strategy override (default: params.yaml's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.chdir(args.project)
    params = load_params(Path("params.yaml"), stage="tune", schema=TUNE)
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))  # what a trial sets
    searched = {"fusion": args.fusion, "lr": args.lr, "dropout": args.dropout}
    if args.strategy:
        searched["strategy"] = args.strategy
    cfg = trial_train_config(params, searched)
    device = torch.device("cpu")
    model, spec, train, val = prepare_trial(params, cfg)
    augment = Augmenter(cfg.augment, cfg.augment_strength, train)
    generator = torch.Generator().manual_seed(cfg.seed)

    def read() -> list:
        return list(train.batches(cfg.batch_size, generator))

    def read_augment() -> list:
        return [augment(b, generator) for b in train.batches(cfg.batch_size, generator)]

    batches = read_augment()
    params_ = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params_, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    def floor() -> None:
        model.train()
        for batch in batches:
            masks = drop_modalities(batch.masks, cfg.modality_dropout, generator)
            loss = loss_fn(model(batch.inputs, masks), batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    val_rows = rows_with_inputs(val)
    one_epoch = dataclasses.replace(cfg, epoch_limit=1)
    states: list[TrainingState] = []

    def epoch() -> None:
        fit(model, train, val, one_epoch, device,
            on_epoch=lambda metrics, m, save_state: states.append(save_state))

    def checkpoint() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            states[-1](Path(tmp) / "state")
            save_model(model, spec, Path(tmp) / "model")

    floor()  # warm-up: first-call allocations
    parts = {
        "read batches": timed(read, args.repeats),
        "read + augment": timed(read_augment, args.repeats),
        "floor (fwd+bwd+step, in memory)": timed(floor, args.repeats),
        "validation pass": timed(lambda: _val_metrics(model, val_rows, cfg.batch_size * 4, device), args.repeats),
        "epoch (fit, validation included)": timed(epoch, args.repeats),
        "checkpoint (state + model)": timed(checkpoint, args.repeats),
    }
    base = parts["floor (fwd+bwd+step, in memory)"]
    print(f"## One epoch, strategy {cfg.strategy}, {len(train)} train / {len(val_rows)} val rows, batch "
          f"{cfg.batch_size}, {torch.get_num_threads()} threads (median of {args.repeats})\n")
    print("| part | s | / floor |")
    print("|---|---:|---:|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")
    per_epoch = parts["epoch (fit, validation included)"] + parts["checkpoint (state + model)"]
    print(f"| **a trial's epoch (epoch + checkpoint)** | **{per_epoch:.2f}** | **{per_epoch / base:.2f}x** |")


if __name__ == "__main__":
    main()

"""One supervised training loop, used by the tune trials, the unimodal baselines, tests and benchmarks.

The story of the tune stage, bottom up: `train` fits one model (this module); `finetune` builds that model on the
aligned embedder for a fine-tuning strategy and calls `fit`; `tune` runs `finetune` as Ray Tune trials;
`tune_results` turns what the study left into tables and the chosen trial.

AdamW with linear warm-up then cosine decay, dropout, modality dropout, seeded per-modality augmentation of the
training batches (`multimodal.training.augment`), gradient accumulation and clipping, early stopping on validation
accuracy,
bf16 autocast on CUDA when asked (`precision`). The complete training state can be saved after
any epoch (safetensors + JSON, no pickle) and a run resumed from it ends exactly as an uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json, write_json
from multimodal.training.augment import Augmenter
from multimodal.training.data_parallel import DataParallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run, without defaults: built from the validated params (`tune.fixed`, the
    sampled `tune.space` knobs, `base.seed`, `tune.asha.max_epochs`) by
    `multimodal.tuning.trial.trial_train_config`."""

    lr: float
    fusion: str
    dropout: float
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    patience: int
    grad_accum_steps: int
    grad_clip: float
    modality_dropout: float
    precision: str  # fp32 | bf16 (autocast of the training steps on CUDA; evaluation stays fp32)
    max_epochs: int  # the LR schedule is laid out over this many epochs
    epoch_limit: int | None  # stop after this epoch, schedule unchanged (re-running an ASHA-stopped trial)
    seed: int
    # Fine-tuning strategy of the encoders (multimodal.models.strategies): frozen | last_k | lora | full.
    strategy: str
    last_k: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: list[str]
    # Fusion architecture: each fusion class reads its own (its `knobs`, multimodal.models.fusion).
    attention_heads: int
    attention_layers: int
    tensor_rank: int
    # Training-batch augmentation (multimodal.training.augment): {modality: {knob: value}}, every magnitude times the
    # strength (0: off). Input normalisation {modality: name} is part of the saved model (ModelSpec.input_norm).
    augment: dict[str, dict[str, Any]]
    augment_strength: float
    input_norm: dict[str, str]


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    improved: bool


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best: EpochMetrics | None
    history: list[EpochMetrics] = field(default_factory=list)


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def drop_modalities(masks: dict[str, torch.Tensor], rate: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Hide each present modality with probability `rate`, never all of a sample's modalities."""
    if rate <= 0 or len(masks) < 2:
        return masks
    names = list(masks)
    present = torch.stack([masks[m] for m in names], dim=1)
    keep = torch.rand(present.shape, generator=generator).to(present.device) >= rate
    dropped = present & keep
    emptied = (~dropped.any(dim=1)) & present.any(dim=1)
    if emptied.any():
        # Give an emptied row back one of its present modalities, chosen at random.
        scores = torch.rand(present.shape, generator=generator).to(present.device).masked_fill(~present, -1.0)
        keep_one = torch.nn.functional.one_hot(scores.argmax(dim=1), len(names)).bool()
        dropped[emptied] = keep_one[emptied]
    return {m: dropped[:, i] for i, m in enumerate(names)}


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast on CUDA when `precision` (tune.fixed.precision) asks for it. Off on CPU, where it is slower; and
    on an H200 the default small ResNets train 0.67-0.82x as fast under it as in fp32 (bench/BENCHMARKS.md, GPU)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" and precision == "bf16")


@torch.no_grad()
def predict_logits(model: nn.Module, data: SplitData, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (N, C) in the order of `data`."""
    model.eval()
    out = []
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        out.append(model(batch.inputs, batch.masks).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict(model: nn.Module, data: SplitData, batch_size: int, device: torch.device,
            temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities (N, C) in the order of `data`: softmax(logits / `temperature`), the saved model's
    calibration (`multimodal.models.temperature`) or 1, the probabilities as trained."""
    logits = predict_logits(model, data, batch_size, device)
    return torch.softmax(logits / temperature, dim=-1) if len(logits) else logits


def _val_metrics(model: nn.Module, data: SplitData, batch_size: int, device: torch.device,
                 parallel: DataParallel | None = None) -> tuple[float, float]:
    if parallel is None:
        probs = predict(model, data, batch_size, device)
        loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-9)), data.labels).item()
        return loss, (probs.argmax(dim=1) == data.labels).float().mean().item()
    # Each rank scores its share of the rows; the sums over the ranks give every rank the same metrics.
    part = data.take(parallel.share(len(data)))
    loss_sum, correct = 0.0, 0
    if len(part):
        probs = predict(model, part, batch_size, device)
        loss_sum = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-9)), part.labels, reduction="sum").item()
        correct = int((probs.argmax(dim=1) == part.labels).sum())
    loss_sum, correct = parallel.sum(loss_sum, correct, device=device)
    # float32 like the single-process mean: the same value, to the bit, when the predictions are the same.
    return loss_sum / len(data), (torch.tensor(correct, dtype=torch.float32) / len(data)).item()


def rows_with_inputs(data: SplitData) -> SplitData:
    """The rows where at least one of `data`'s modalities is present: a unimodal model is validated (early
    stopping, checkpoint choice, the val accuracy that ranks it) only where it has an input, as it is scored."""
    present = data.any_present()
    return data if bool(present.all()) else data.take(present.nonzero().flatten())


StateSaver = Callable[[Path], None]
# The loss of a training batch from the model's logits, the (augmented) batch and the masks the model saw; the
# default is cross-entropy with the labels (distillation passes its own: multimodal.compression.distill).
Objective = Callable[[torch.Tensor, SplitData, dict[str, torch.Tensor]], torch.Tensor]


def fit(
    model: nn.Module,
    train: SplitData,
    val: SplitData,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics, nn.Module, StateSaver], None] | None = None,
    resume_from: Path | None = None,
    objective: Objective | None = None,
) -> FitResult:
    """Train `model` in place; keep the best-on-val weights; stop after `patience` epochs without improvement.

    `objective(logits, batch, masks)` is the loss of a training batch (default: cross-entropy with its labels).
    After each epoch `on_epoch(metrics, model, save_state)` is called; `save_state(directory)` writes the complete
    training state there, and `fit(..., resume_from=directory)` continues with the next epoch.

    Inside a torch.distributed process group of several processes the run is data-parallel
    (`multimodal.training.data_parallel`): every rank calls `fit` with the same data and config, trains on its share of
    each
    batch, and gets the same metrics and weights, hence the same `on_epoch` calls (one of them saves).
    """
    # 1. Everything random is seeded from the config; a resumed run then overwrites it with the saved state.
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    parallel = DataParallel.current()
    if parallel is not None:
        parallel.broadcast_state(model)  # one starting point, whatever each rank built
    val = rows_with_inputs(val)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * cfg.max_epochs, cfg.warmup_ratio)
    )
    cross_entropy = nn.CrossEntropyLoss()
    objective = objective or (lambda logits, batch, masks: cross_entropy(logits, batch.labels))
    augment = Augmenter(cfg.augment, cfg.augment_strength, train)
    result = FitResult(best_state=copy.deepcopy(model.state_dict()), best=None)
    parts = TrainingState(model, optimizer, scheduler, generator, result)
    start = 1
    if resume_from is not None:
        start = parts.load(Path(resume_from), device) + 1
        logger.info("resuming from %s at epoch %d", resume_from, start)
        if _should_stop(result, start - 1, cfg):
            start = cfg.max_epochs + 1  # the interrupted run had already decided to stop
    # 2. The epochs.
    for epoch in range(start, cfg.max_epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for step, batch in enumerate(train.batches(cfg.batch_size, generator)):
            batch = augment(batch.to(device), generator)  # training batches only; a fresh draw every epoch
            masks = drop_modalities(batch.masks, cfg.modality_dropout, generator)
            # The last group of an epoch may be short: weight by its real size so every batch counts the same.
            group_start = step - step % cfg.grad_accum_steps
            divisor = min(cfg.grad_accum_steps, batches_per_epoch - group_start)
            if parallel is not None:
                # This rank's rows (all ranks drew the same batch); its mean loss counts by their share of it.
                index = parallel.share(len(batch))
                divisor = divisor * len(batch) / max(len(index), 1)
                batch, masks = batch.take(index), {m: mask[index] for m, mask in masks.items()}
            if len(batch):
                with autocast(device, cfg.precision):
                    loss = objective(model(batch.inputs, masks).float(), batch, masks)
                (loss / divisor).backward()
                total += loss.item() * len(batch)
                seen += len(batch)
            if (step + 1) % cfg.grad_accum_steps == 0 or step + 1 == batches_per_epoch:
                if parallel is not None:
                    parallel.sum_gradients(params)
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if parallel is not None:
            total, seen = parallel.sum(total, seen, device=device)
            parallel.broadcast_buffers(model)  # rank 0's BatchNorm statistics: one model to validate and save
        val_loss, val_acc = _val_metrics(model, val, cfg.batch_size * 4, device, parallel)
        improved = result.best is None or val_acc > result.best.val_accuracy
        metrics = EpochMetrics(epoch, total / max(seen, 1), val_loss, val_acc, improved)
        result.history.append(metrics)
        if improved:
            result.best = metrics
            result.best_state = copy.deepcopy(model.state_dict())
        logger.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f", epoch, metrics.train_loss, val_loss, val_acc)
        if on_epoch is not None:
            on_epoch(metrics, model, lambda directory, epoch=epoch: parts.save(Path(directory), epoch))
        if _should_stop(result, epoch, cfg):
            break
    model.load_state_dict(result.best_state)
    return result


def _should_stop(result: FitResult, epoch: int, cfg: TrainConfig) -> bool:
    if cfg.epoch_limit is not None and epoch >= cfg.epoch_limit:
        return True
    return result.best is not None and epoch - result.best.epoch >= cfg.patience


# --- training state: safetensors for tensors, JSON for the rest ---------------------------------------------

STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"


@dataclass
class TrainingState:
    """What `fit` needs to continue a run exactly: weights, best weights, optimizer, scheduler, RNGs, history."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    result: FitResult

    def save(self, directory: Path, epoch: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"best.{k}": v for k, v in self.result.best_state.items()}
        optimizer = self.optimizer.state_dict()
        optimizer_values: dict[str, dict[str, Any]] = {}
        for index, values in optimizer["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value
                else:
                    optimizer_values.setdefault(str(index), {})[name] = value
        tensors |= {f"rng.{name}": value for name, value in _rng_states(self.generator).items()}
        # Clones: safetensors refuses tensors sharing memory, which state dicts may hold.
        tmp = directory / f".{STATE_TENSORS}.tmp"
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(directory / STATE_TENSORS)
        write_json(directory / STATE_JSON, {  # written last: its presence marks a complete state
            "epoch": epoch,
            "history": [asdict(m) for m in self.result.history],
            "best": asdict(self.result.best) if self.result.best else None,
            "optimizer": {"param_groups": optimizer["param_groups"], "values": optimizer_values,
                          "indices": sorted(optimizer["state"])},
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
        })

    def load(self, directory: Path, device: torch.device) -> int:
        """Restore everything saved in `directory`; returns the epoch it was saved after."""
        meta = read_json(directory / STATE_JSON)
        tensors = load_file(str(directory / STATE_TENSORS))
        take = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        self.model.load_state_dict(take("model."))
        self.result.best_state = {k: v.to(device) for k, v in take("best.").items()}
        self.result.history = [EpochMetrics(**m) for m in meta["history"]]
        self.result.best = EpochMetrics(**meta["best"]) if meta["best"] else None
        saved = meta["optimizer"]
        state = {}
        for index in saved["indices"]:
            values = dict(saved["values"].get(str(index), {}))
            values |= {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optimizer.{index}.")}
            state[index] = values
        # JSON turned tuples (AdamW betas) into lists.
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                  for g in saved["param_groups"]]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(groups)})
        _set_rng_states(self.generator, take("rng."))
        return int(meta["epoch"])


def _rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The data generator (shuffles, modality dropout) and torch's global RNGs (dropout)."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return states


def _set_rng_states(generator: torch.Generator, states: dict[str, torch.Tensor]) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    cuda = [states[f"cuda.{i}"] for i in range(len(states) - 2) if f"cuda.{i}" in states]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])

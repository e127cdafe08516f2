"""One supervised training loop, used by the tune trials, the unimodal baselines, tests and benchmarks.

AdamW with linear warm-up then cosine decay, dropout, modality dropout, gradient accumulation and clipping,
early stopping on validation accuracy, bf16 autocast on CUDA.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from multimodal.dataset import SplitData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    fusion: str = "concat"
    dropout: float = 0.1
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience: int = 5
    grad_accum_steps: int = 1
    grad_clip: float = 1.0
    modality_dropout: float = 0.1
    max_epochs: int = 20
    seed: int = 42


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


def autocast(device: torch.device):
    # bf16 autocast where it pays (CUDA); on CPU it is slower for these small models, so it stays off.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(model: nn.Module, data: SplitData, batch_size: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (N, C) in the order of `data`."""
    model.eval()
    out = []
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        with autocast(device):
            out.append(torch.softmax(model(batch.inputs, batch.masks).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def _val_metrics(model: nn.Module, data: SplitData, batch_size: int, device: torch.device) -> tuple[float, float]:
    probs = predict(model, data, batch_size, device)
    loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-9)), data.labels).item()
    return loss, (probs.argmax(dim=1) == data.labels).float().mean().item()


def fit(
    model: nn.Module,
    train: SplitData,
    val: SplitData,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
) -> FitResult:
    """Train `model` in place; keep the best-on-val weights; stop after `patience` epochs without improvement."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * cfg.max_epochs, cfg.warmup_ratio)
    )
    loss_fn = nn.CrossEntropyLoss()
    result = FitResult(best_state=copy.deepcopy(model.state_dict()), best=None)
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for step, batch in enumerate(train.batches(cfg.batch_size, generator)):
            batch = batch.to(device)
            masks = drop_modalities(batch.masks, cfg.modality_dropout, generator)
            with autocast(device):
                loss = loss_fn(model(batch.inputs, masks).float(), batch.labels)
            # The last group of an epoch may be short: weight by its real size so every batch counts the same.
            group_start = step - step % cfg.grad_accum_steps
            group_size = min(cfg.grad_accum_steps, batches_per_epoch - group_start)
            (loss / group_size).backward()
            if (step + 1) % cfg.grad_accum_steps == 0 or step + 1 == batches_per_epoch:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(batch)
            seen += len(batch)
        val_loss, val_acc = _val_metrics(model, val, cfg.batch_size * 4, device)
        improved = result.best is None or val_acc > result.best.val_accuracy
        metrics = EpochMetrics(epoch, total / max(seen, 1), val_loss, val_acc, improved)
        result.history.append(metrics)
        if improved:
            result.best = metrics
            result.best_state = copy.deepcopy(model.state_dict())
        logger.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f", epoch, metrics.train_loss, val_loss, val_acc)
        if on_epoch is not None:
            on_epoch(metrics, model)
        if result.best is not None and epoch - result.best.epoch >= cfg.patience:
            break
    model.load_state_dict(result.best_state)
    return result

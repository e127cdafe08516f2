"""Data-parallel training over a torch.distributed process group: what `multimodal.training.train.fit` does differently
when a trial spans several workers (`tune.workers_per_trial`, Ray Train sets the group up).

Every rank draws the same global batch from the same seeded generator (augmentation and modality dropout are
drawn for the whole batch too, so they match a single worker's), trains on its contiguous share of the rows, and
the gradients are summed across ranks once per optimizer step, each rank's loss weighted by its share of the global
batch: W workers then take the step one worker takes on the same batch, up to float summation order.

An explicit all-reduce rather than DistributedDataParallel: modality dropout and absent modalities leave some
parameters without a gradient on some ranks (DDP would need `find_unused_parameters` and still disagree with the
single worker, for which such a parameter is skipped by the optimizer, not given a zero gradient), and one reduce
per optimizer step suits gradient accumulation.

What still differs from one worker: nn.Dropout masks (each rank draws them for its rows from the same-seeded
global RNG) and BatchNorm batch statistics (per share, as with DDP; SyncBatchNorm needs CUDA); running statistics
are taken from rank 0 before each validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BUCKET = 1 << 24  # gradient elements per all-reduce: bounds the extra memory of flattening


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the process group: `rank` of `world`."""

    rank: int
    world: int

    @classmethod
    def current(cls) -> "DataParallel | None":
        """The running process group, or None for a single process (a group of one trains exactly as none)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return cls(dist.get_rank(), dist.get_world_size())

    def share(self, n: int) -> torch.Tensor:
        """This rank's rows of `n` (a contiguous slice; sizes differ by at most one, and may be empty)."""
        return torch.tensor_split(torch.arange(n), self.world)[self.rank]

    def broadcast_state(self, model: nn.Module) -> None:
        """Every rank takes rank 0's weights and buffers (BatchNorm running statistics)."""
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def broadcast_buffers(self, model: nn.Module) -> None:
        for tensor in model.buffers():
            dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Sum each parameter's gradient over the ranks. A parameter no rank computed a gradient for keeps None
        (the optimizer skips it, as it does for one worker); one that only some ranks did gets zeros elsewhere."""
        device = params[0].device if params else torch.device("cpu")
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        dist.all_reduce(has)
        reduced = [p for p, count in zip(params, has.tolist()) if count > 0]
        for p in reduced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(reduced):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()

    def sum(self, *values: float, device: torch.device) -> list[float]:
        """Each value summed over the ranks (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def _buckets(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one dtype, about BUCKET elements per group."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size + p.numel() > BUCKET or buckets[-1][0].grad.dtype != p.grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    return buckets

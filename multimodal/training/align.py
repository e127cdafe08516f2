"""Cross-modal alignment: per-modality projections into one space, trained CLIP-style on the train split.

Frozen encoders are run once here and their pooled outputs cached (`features/<split>.safetensors`), so
alignment, every tuning trial and evaluation work on cached features instead of re-encoding.
Trainable encoders (config-built image/audio by default) are pretrained together with the projections; once
aligned, their pooled outputs are cached too, so the `frozen` fine-tuning strategy never runs an encoder.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from multimodal.modalities import PooledEncoder, build_pooled_encoder, set_input_norm
from multimodal.modalities.base import FeatureInput
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.bundle import save_inputs
from multimodal.models.model import Embedder, build_encoder_from_entry, encoder_entry, state_dict_for_saving
from multimodal.pipeline.stage_params import StageParams
from multimodal.storage.columns import LazyColumn, RowFile, read_header
from multimodal.storage.header import metadata_json
from multimodal.storage.dataset import SplitData
from multimodal.storage.io import read_json, write_json

logger = logging.getLogger(__name__)

RECALL_BLOCK = 1024  # query rows per similarity block in `retrieval_recall`


@dataclass(frozen=True)
class AlignConfig:
    """The knobs of `train_alignment`, without defaults: `from_params` builds it from params `align` and the seed."""

    dim: int
    epochs: int
    batch_size: int
    lr: float
    temperature: float
    weight_decay: float
    seed: int
    # Input normalisation of every encoder, frozen ones included (`tune.fixed.input_norm`): the cached features
    # carry it, so the `frozen` strategy cannot change it.
    input_norm: dict[str, str]

    @classmethod
    def from_params(cls, params: StageParams) -> "AlignConfig":
        norm = {m: k for m, k in params.tune.fixed.input_norm.items() if m in params.preprocess.modalities}
        return cls(**params.align.model_dump(exclude={"freeze"}), seed=params.base.seed, input_norm=norm)


@torch.no_grad()
def encode_present(encoder: torch.nn.Module, data: SplitData, modality: str, batch_size: int,
                   device: torch.device, sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                   ) -> torch.Tensor | None:
    """Pooled encoder outputs (N, D) for the rows that have `modality`; zeros elsewhere.

    With `sink`, each batch goes to `sink(rows, outputs)` instead (rows increasing; `RowFile.write`) and nothing
    is returned: (N, D) is never in memory.
    """
    encoder.eval().to(device)
    rows = data.masks[modality].nonzero().flatten()
    out = torch.zeros(len(data), encoder.out_dim) if sink is None else None
    for start in tqdm(range(0, len(rows), batch_size), desc=f"encode {modality}", unit="batch", leave=False):
        index = rows[start : start + batch_size]
        inputs = {k: v[index].to(device) for k, v in data.inputs[modality].items()}
        values = encoder(**inputs).float().cpu()
        if sink is None:
            out[index] = values
        else:
            sink(index, values)
    return out


def use_cached_features(data: SplitData, features: dict[str, torch.Tensor | LazyColumn]) -> SplitData:
    """Swap raw inputs of frozen modalities for their cached features."""
    inputs = dict(data.inputs)
    for modality, value in features.items():
        inputs[modality] = {"features": value}
    return SplitData(data.sample_ids, data.labels, inputs, data.masks)


def build_encoders(specs: dict[str, ModalitySpec], modalities: list[str], frozen: list[str],
                   input_norm: dict[str, str] | None = None):
    """HF encoders with pooling and their input normalisation (none unless named); frozen ones don't train."""
    encoders = {m: build_pooled_encoder(m, specs[m]) for m in modalities}
    for m, kind in (input_norm or {}).items():
        if m in encoders:
            set_input_norm(encoders[m], m, kind)
    for m in frozen:
        encoders[m].requires_grad_(False)
    return encoders


def pair_loss(z: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE averaged over every modality pair, on the rows where both are present."""
    losses = []
    for a, b in itertools.combinations(z, 2):
        both = masks[a] & masks[b]
        if both.sum() < 2:
            continue
        za, zb = F.normalize(z[a][both], dim=-1), F.normalize(z[b][both], dim=-1)
        logits = za @ zb.T / temperature
        target = torch.arange(len(za), device=za.device)
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean() if losses else torch.zeros((), requires_grad=True)


def train_alignment(embedder: Embedder, train: SplitData, cfg: AlignConfig, device: torch.device) -> list[float]:
    """Contrastive training of every trainable parameter of `embedder`; returns the loss per epoch."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    embedder.to(device)
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        embedder.train()
        total, batches = 0.0, 0
        # Batches are read as they come (a list of them would hold the whole split in memory).
        for batch in tqdm(train.batches(cfg.batch_size, generator), total=math.ceil(len(train) / cfg.batch_size),
                          desc=f"align epoch {epoch}", leave=False):
            batch = batch.to(device)
            loss = pair_loss(embedder(batch.inputs, batch.masks), batch.masks, cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / max(batches, 1))
        logger.info("align epoch %d: contrastive loss %.4f", epoch, history[-1])
    return history


@torch.no_grad()
def retrieval_recall(embedder: Embedder, data: SplitData, device: torch.device, ks=(1, 5),
                     batch_size: int = 256) -> dict[str, float]:
    """Cross-modal retrieval recall@k for every ordered modality pair over rows having both.

    Also `<a>_to_<b>_same_label@1`: how often the top match carries the query's label. Pairs that share only
    their class (as in the demo dataset) cannot be told apart within a class, so instance recall stays near
    chance there while this shows whether the space groups classes.
    """
    embedder.eval().to(device)
    # Projections (N, align.dim) only; the raw inputs are read batch by batch.
    parts = [embedder(b.inputs, b.masks) for b in (b.to(device) for b in data.batches(batch_size))]
    z = {m: F.normalize(torch.cat([p[m] for p in parts]).float().cpu(), dim=-1) for m in data.modalities}
    out = {}
    for a, b in itertools.permutations(data.modalities, 2):
        both = (data.masks[a] & data.masks[b]).nonzero().flatten()
        if len(both) == 0:
            continue
        za, zb = z[a][both], z[b][both]
        rank, top = torch.empty(len(both), dtype=torch.long), torch.empty(len(both), dtype=torch.long)
        # Queries in blocks: the full similarity matrix is quadratic in the rows (40 GB at 100k).
        for start in range(0, len(both), RECALL_BLOCK):
            sims = za[start : start + RECALL_BLOCK] @ zb.T
            true = sims.diagonal(offset=start).unsqueeze(1)
            # Candidates scoring at least as high as the true match (ties count against it, so a collapsed space
            # scores 0).
            rank[start : start + len(sims)] = (sims >= true).sum(dim=1) - 1
            top[start : start + len(sims)] = sims.argmax(dim=1)
        for k in ks:
            out[f"{a}_to_{b}_recall@{k}"] = (rank < k).float().mean().item()
        labels = data.labels[both]
        out[f"{a}_to_{b}_same_label@1"] = (labels[top] == labels).float().mean().item()
    return out


# --- files ---------------------------------------------------------------------------------------------


def save_embedder(out_dir: Path, embedder: Embedder, cfg: AlignConfig) -> None:
    """`embedder.safetensors` + `embedder.json`."""
    save_file(state_dict_for_saving(embedder), str(out_dir / "embedder.safetensors"))
    entries = {m: encoder_entry(e) for m, e in embedder.encoders.items()}
    write_json(out_dir / "embedder.json", {"encoders": entries, "modalities": list(entries), "align": asdict(cfg)})


def feature_files(out_dir: Path, sample_ids: dict[str, list[str]], widths: dict[str, int]) -> dict[str, RowFile]:
    """`features/<split>.safetensors` (pooled, pre-projection outputs of every modality's encoder: frozen ones and,
    with their aligned weights, trainable ones), created at full size and filled batch by batch."""
    (out_dir / "features").mkdir(exist_ok=True)
    return {split: RowFile(out_dir / "features" / f"{split}.safetensors", widths, len(ids),
                           {"sample_ids": json.dumps(ids)}) for split, ids in sample_ids.items()}


def load_embedder(aligned_dir: Path) -> tuple[Embedder, dict]:
    meta = read_json(aligned_dir / "embedder.json")
    encoders = {m: build_encoder_from_entry(m, meta["encoders"][m]) for m in meta["modalities"]}
    for m, kind in meta["align"].get("input_norm", {}).items():  # absent: written before input normalisation
        if m in encoders and isinstance(encoders[m], PooledEncoder):
            set_input_norm(encoders[m], m, kind)
    embedder = Embedder(encoders, meta["align"]["dim"])
    embedder.load_state_dict(load_file(str(aligned_dir / "embedder.safetensors")))
    return embedder, meta


def load_cached_features(aligned_dir: Path, data: SplitData, split: str, modalities: list[str]) -> SplitData:
    """Replace the raw inputs of `modalities` by their cached features of `split`, checking the samples line up."""
    path = aligned_dir / "features" / f"{split}.safetensors"
    metadata, segments = read_header(path)  # the features are read batch by batch (`LazyColumn`)
    if metadata_json(path, metadata, "sample_ids") != data.sample_ids:
        raise RuntimeError(f"{path} was computed for other samples than the current {split} split; re-run `align`")
    missing = sorted(set(modalities) - set(segments))
    if missing:
        raise RuntimeError(f"{path} holds no features of {missing} (written by an older `align`); re-run `align`")
    n = len(data)
    return use_cached_features(data, {m: LazyColumn([segments[m]], torch.zeros(n, dtype=torch.long), torch.arange(n))
                                      for m in modalities})


def encode_trainable(embedder: Embedder, data: dict[str, SplitData], batch_size: int, device: torch.device,
                     files: dict[str, RowFile] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Pooled outputs {split: {modality: (N, D)}} of the embedder's real (not cached) encoders on raw `data`;
    with `files` ({split: RowFile}) written there batch by batch instead, and {} returned."""
    out = {}
    for split, raw in data.items():
        for m, e in embedder.encoders.items():
            if not isinstance(e, FeatureInput):
                sink = (lambda rows, values, f=files[split], m=m: f.write(m, rows, values)) if files else None
                out.setdefault(split, {})[m] = encode_present(e, raw, m, batch_size, device, sink)
    return {} if files else out


def frozen_as_features(encoders: dict[str, torch.nn.Module], frozen: list[str]) -> dict[str, torch.nn.Module]:
    """The same encoder dict with frozen encoders replaced by cached-feature inputs."""
    return {m: FeatureInput(e.out_dim) if m in frozen else e for m, e in encoders.items()}


def align_and_cache(out_dir: Path, raw: dict[str, SplitData], encoders: dict[str, PooledEncoder], frozen: list[str],
                    cfg: AlignConfig, processing: dict[str, ModalitySpec], device: torch.device) -> dict[str, float]:
    """What stage `align` writes into `out_dir` from the raw splits (train, val, test): the features of every
    encoder, the aligned embedder, and the encoders with their processing (`save_inputs`). Returns the metrics."""
    # 1. Frozen encoders run once; their pooled outputs, streamed to the features files, replace the raw inputs
    #    from here on (read back batch by batch).
    widths = {m: e.out_dim for m, e in encoders.items()}
    files = feature_files(out_dir, {s: d.sample_ids for s, d in raw.items()}, widths)
    for s, m in itertools.product(raw, frozen):
        encode_present(encoders[m], raw[s], m, cfg.batch_size, device, sink=functools.partial(files[s].write, m))
    data = {s: use_cached_features(d, {m: files[s].column(m) for m in frozen}) for s, d in raw.items()}
    # 2. Contrastive training of projections (and trainable encoders) on train, no labels.
    embedder = Embedder(frozen_as_features(encoders, frozen), cfg.dim)
    losses = train_alignment(embedder, data["train"], cfg, device)
    # 3. Retrieval quality on held-out splits.
    metrics = {"contrastive_loss_last": losses[-1] if losses else None}
    for split in ("val", "test"):
        metrics.update({f"{split}/{k}": v for k, v in retrieval_recall(embedder, data[split], device).items()})
    # 4. Every trainable encoder, with its aligned weights, run once more: the `frozen` strategy reads these.
    encode_trainable(embedder, raw, cfg.batch_size, device, files)
    save_embedder(out_dir, embedder.cpu(), cfg)
    # Every encoder behind those features (frozen and aligned alike: the trainable ones are the embedder's) and the
    # processing that fed it: evaluate re-encodes corrupted inputs with them, predict runs a model on new data.
    save_inputs(out_dir, encoders, processing)
    return metrics

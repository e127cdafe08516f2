"""Cross-modal alignment: per-modality projections into one space, trained CLIP-style on the train split.

Frozen encoders are run once here and their pooled outputs cached (`features/<split>.safetensors`), so
alignment, every tuning trial and evaluation work on cached features instead of re-encoding.
Trainable encoders (config-built image/audio by default) are pretrained together with the projections; once
aligned, their pooled outputs are cached too, so the `frozen` fine-tuning strategy never runs an encoder.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from tqdm import tqdm

from multimodal.config import ModalitySpec, Params
from multimodal.dataset import SplitData
from multimodal.io import read_json, write_json
from multimodal.model import Embedder, build_encoder_from_entry, encoder_entry, state_dict_for_saving
from multimodal.modalities import PooledEncoder, build_pooled_encoder, set_input_norm
from multimodal.modalities.base import FeatureInput

logger = logging.getLogger(__name__)


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
    def from_params(cls, params: Params) -> "AlignConfig":
        norm = {m: k for m, k in params.tune.fixed.input_norm.items() if m in params.preprocess.modalities}
        return cls(**params.align.model_dump(exclude={"freeze"}), seed=params.base.seed, input_norm=norm)


@torch.no_grad()
def encode_present(encoder: torch.nn.Module, data: SplitData, modality: str, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Pooled encoder outputs (N, D) for the rows that have `modality`; zeros elsewhere."""
    encoder.eval().to(device)
    rows = data.masks[modality].nonzero().flatten()
    out = torch.zeros(len(data), encoder.out_dim)
    for start in tqdm(range(0, len(rows), batch_size), desc=f"encode {modality}", unit="batch", leave=False):
        index = rows[start : start + batch_size]
        inputs = {k: v[index].to(device) for k, v in data.inputs[modality].items()}
        out[index] = encoder(**inputs).float().cpu()
    return out


def use_cached_features(data: SplitData, features: dict[str, torch.Tensor]) -> SplitData:
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
        for batch in tqdm(list(train.batches(cfg.batch_size, generator)), desc=f"align epoch {epoch}", leave=False):
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
    parts = [embedder(b.inputs, b.masks) for b in (b.to(device) for b in data.batches(batch_size))]
    z = {m: F.normalize(torch.cat([p[m] for p in parts]).float().cpu(), dim=-1) for m in data.modalities}
    out = {}
    for a, b in itertools.permutations(data.modalities, 2):
        both = (data.masks[a] & data.masks[b]).nonzero().flatten()
        if len(both) == 0:
            continue
        sims = z[a][both] @ z[b][both].T
        # Candidates scoring at least as high as the true match (ties count against it, so a collapsed space scores 0).
        rank = (sims >= sims.diagonal().unsqueeze(1)).sum(dim=1) - 1
        for k in ks:
            out[f"{a}_to_{b}_recall@{k}"] = (rank < k).float().mean().item()
        labels = data.labels[both]
        out[f"{a}_to_{b}_same_label@1"] = (labels[sims.argmax(dim=1)] == labels).float().mean().item()
    return out


# --- files ---------------------------------------------------------------------------------------------


def save_aligned(out_dir: Path, embedder: Embedder, features: dict[str, dict[str, torch.Tensor]],
                 sample_ids: dict[str, list[str]], cfg: AlignConfig) -> None:
    """`embedder.safetensors` + `embedder.json`, and `features/<split>.safetensors` (pooled, pre-projection
    outputs of every modality's encoder: frozen ones and, with their aligned weights, trainable ones)."""
    save_file(state_dict_for_saving(embedder), str(out_dir / "embedder.safetensors"))
    entries = {m: encoder_entry(e) for m, e in embedder.encoders.items()}
    write_json(out_dir / "embedder.json", {"encoders": entries, "modalities": list(entries), "align": asdict(cfg)})
    (out_dir / "features").mkdir(exist_ok=True)
    for split, tensors in features.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "features" / f"{split}.safetensors"),
                  metadata={"sample_ids": json.dumps(sample_ids[split])})


def load_embedder(aligned_dir: Path) -> tuple[Embedder, dict]:
    meta = read_json(aligned_dir / "embedder.json")
    encoders = {m: build_encoder_from_entry(m, meta["encoders"][m]) for m in meta["modalities"]}
    for m, kind in meta["align"].get("input_norm", {}).items():  # absent: written before input normalisation
        if m in encoders and isinstance(encoders[m], PooledEncoder):
            set_input_norm(encoders[m], m, kind)
    embedder = Embedder(encoders, meta["align"]["dim"])
    embedder.load_state_dict(load_file(str(aligned_dir / "embedder.safetensors")))
    return embedder, meta


def feature_encoder(aligned_dir: Path, modality: str, specs: dict[str, ModalitySpec]) -> PooledEncoder:
    """The encoder whose pooled outputs `align` cached for `modality`, to encode new inputs the same way.

    A trainable encoder comes with its aligned weights from the embedder; a frozen one (`align.freeze`) was
    never saved and is built again from its params section `specs[modality]` with align's input normalisation.
    A config-built frozen encoder has random weights that this cannot rebuild: compare with the cached features
    before relying on it.
    """
    embedder, meta = load_embedder(aligned_dir)
    encoder = embedder.encoders[modality]
    if isinstance(encoder, PooledEncoder):
        return encoder.eval()
    norm = {m: k for m, k in meta["align"].get("input_norm", {}).items() if m == modality}
    return build_encoders(specs, [modality], [modality], norm)[modality].eval()


def load_cached_features(aligned_dir: Path, data: SplitData, split: str, modalities: list[str]) -> SplitData:
    """Replace the raw inputs of `modalities` by their cached features of `split`, checking the samples line up."""
    path = aligned_dir / "features" / f"{split}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        ids = json.loads(handle.metadata()["sample_ids"])
        if ids != data.sample_ids:
            raise RuntimeError(f"{path} was computed for other samples than the current {split} split; re-run `align`")
        missing = sorted(set(modalities) - set(handle.keys()))
        if missing:
            raise RuntimeError(f"{path} holds no features of {missing} (written by an older `align`); re-run `align`")
        return use_cached_features(data, {m: handle.get_tensor(m) for m in modalities})


def encode_trainable(embedder: Embedder, data: dict[str, SplitData], batch_size: int,
                     device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """Pooled outputs {split: {modality: (N, D)}} of the embedder's real (not cached) encoders on raw `data`."""
    return {split: {m: encode_present(e, raw, m, batch_size, device)
                    for m, e in embedder.encoders.items() if not isinstance(e, FeatureInput)}
            for split, raw in data.items()}


def frozen_as_features(encoders: dict[str, torch.nn.Module], frozen: list[str]) -> dict[str, torch.nn.Module]:
    """The same encoder dict with frozen encoders replaced by cached-feature inputs."""
    return {m: FeatureInput(e.out_dim) if m in frozen else e for m, e in encoders.items()}

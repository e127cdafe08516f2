"""Fine-tuning strategies: which encoder weights train on top of the aligned embedder.

- `frozen`: no encoder runs; every modality is read from the pooled features `align` cached.
- `last_k`: only the last k transformer blocks of each encoder (and what follows them, e.g. a final layernorm).
- `lora`: peft LoRA adapters on the HF model inside each encoder; the base weights stay put.
- `full`: every encoder weight trains.

Projections, fusion and head always train. Encoders that `align.freeze` already turned into cached features are
left as they are. peft is imported only for `lora`, and saved models are plain (`without_adapters`).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from torch import nn

from multimodal.modalities.base import FeatureInput, PooledEncoder

STRATEGIES = ("frozen", "last_k", "lora", "full")  # what `strategy` may name (tune.fixed.strategy, tune.space)

def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose one of {list(STRATEGIES)}")


def feature_modalities(strategy: str, meta: dict[str, Any]) -> list[str]:
    """Modalities read from `align`'s cached features: the `align.freeze` ones always, every one for `frozen`.

    `meta` is the aligned embedder's `embedder.json` (`load_embedder` returns it).
    """
    check_strategy(strategy)
    if strategy == "frozen":
        return list(meta["modalities"])
    return [m for m in meta["modalities"] if "features" in meta["encoders"][m]]


def apply_strategy(embedder: nn.Module, cfg: Any) -> None:
    """Set up the HF encoders of `embedder` (a `models.model.Embedder`) for `cfg.strategy` (a training config),
    in place (frozen ones become cached-feature inputs)."""
    check_strategy(cfg.strategy)
    for modality, encoder in list(embedder.encoders.items()):
        if not isinstance(encoder, PooledEncoder):
            continue  # already cached features (align.freeze)
        if cfg.strategy == "frozen":
            embedder.encoders[modality] = FeatureInput(encoder.out_dim)
        elif cfg.strategy == "last_k":
            train_last_blocks(encoder.model, cfg.last_k)
        elif cfg.strategy == "lora":
            encoder.model = add_lora(encoder.model, cfg)
        else:
            encoder.requires_grad_(True)


def block_list(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an HF model: its longest `nn.ModuleList` (`encoder.layer`, `layers`, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"last_k: found no list of transformer blocks (nn.ModuleList) in {type(model).__name__}")
    return max(lists, key=len)  # max keeps the first of equally long lists: the outermost one


def train_last_blocks(model: nn.Module, k: int) -> None:
    """Only the last `k` blocks and every parameter registered after them (final layernorm, pooler) train.

    HF models register their modules in forward order (embeddings, blocks, final norm), which this relies on.
    A `k` beyond the depth trains every block.
    """
    if k < 1:
        raise ValueError(f"last_k must be at least 1, got {k}")
    blocks = block_list(model)
    first_trained = {id(p) for p in blocks[max(0, len(blocks) - k)].parameters()}
    training = False
    for param in model.parameters():
        training = training or id(param) in first_trained
        param.requires_grad_(training)


def add_lora(model: nn.Module, cfg: Any) -> nn.Module:
    """`model` wrapped by peft with LoRA adapters on the modules whose names end with `cfg.lora_targets`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=list(cfg.lora_targets))
    try:
        return get_peft_model(model, config)  # freezes every base weight; only lora_A / lora_B train
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise ValueError(f"lora: none of lora_targets {list(cfg.lora_targets)} names a module of "
                         f"{type(model).__name__}; its linear and conv layers are named {names}") from err


def without_adapters(model: nn.Module) -> nn.Module:
    """`model` itself if it holds no LoRA adapters, else a copy with them merged into plain HF models.

    The copy keeps the model under training untouched (merging in place would change what keeps training).
    """
    peft = sys.modules.get("peft")  # no peft imported means no adapters anywhere
    if peft is None:
        return model
    wrapped = [m for m in model.modules() if isinstance(m, PooledEncoder) and isinstance(m.model, peft.PeftModel)]
    if not wrapped:
        return model
    plain = copy.deepcopy(model)
    for encoder in [m for m in plain.modules() if isinstance(m, PooledEncoder)]:
        if isinstance(encoder.model, peft.PeftModel):
            encoder.model = encoder.model.merge_and_unload()
    return plain

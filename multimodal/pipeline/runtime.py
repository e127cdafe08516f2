"""Process-wide runtime choices made once: offline switches, seeding, device."""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from multimodal.pipeline.offline import HUB_ENV, TELEMETRY_OFF


def go_offline(allow_hub: bool = False) -> None:
    """Telemetry off, and the Hugging Face hub offline unless params named a `hub:` id (`allow_hub`).

    Forced, not defaulted: an inherited `HF_HUB_OFFLINE=0` must not turn the default run online. huggingface_hub
    reads the switch once, when imported, so an already imported one is switched too.
    """
    hub = "0" if allow_hub else "1"
    os.environ.update({**TELEMETRY_OFF, **dict.fromkeys(HUB_ENV, hub)})
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # not about the network: the user's choice wins
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = not allow_hub


def go_offline_for(specs: Mapping[str, Any]) -> None:
    """Offline unless some modality section (a `ModalitySpec`) names a `hub:` id (params validation refuses any
    other remote name)."""
    go_offline(allow_hub=any(spec.names_hub for spec in specs.values()))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str = "auto") -> torch.device:
    """The one place the device is chosen: `auto` takes CUDA when present."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("base.device is 'cuda' but no CUDA device is visible to torch")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

"""Process-wide runtime choices made once: offline switches, seeding, device."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def go_offline(allow_hub: bool = False) -> None:
    """Turn telemetry off; keep the hub offline unless the user named a hub id (`allow_hub`)."""
    for key, value in OFFLINE_ENV.items():
        if allow_hub and key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            continue
        os.environ.setdefault(key, value)


def go_offline_for(specs) -> None:
    """Offline unless some modality names a hub id (not the bundled `minilm`, not a local folder)."""
    hub = any(s.pretrained and s.pretrained != "minilm" and not Path(s.pretrained).exists() for s in specs.values())
    go_offline(allow_hub=hub)


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

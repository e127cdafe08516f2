"""The one table of switches that keep every tool from calling out: telemetry off, Hugging Face hub offline.

Python reads it here (`multimodal.pipeline.runtime.go_offline`, the scratch workspaces, the Prefect server, Ray's
workers);
the shell scripts take it from `python -m multimodal.pipeline.offline` (prints `export` lines), so no list is kept
twice.
Kept free of heavy imports: the scripts run it before anything else.
"""

from __future__ import annotations

import shlex

TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DVC_STUDIO_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
}
HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_OFFLINE = dict.fromkeys(HUB_ENV, "1")


def offline_env() -> dict[str, str]:
    """Every switch, the hub offline: what a stage's environment starts from."""
    return {**TELEMETRY_OFF, **HUB_OFFLINE}


if __name__ == "__main__":
    print("\n".join(f"export {key}={shlex.quote(value)}" for key, value in offline_env().items()))

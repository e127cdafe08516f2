"""Joining Ray: the environment every Ray process gets, and the one function that joins an existing cluster
(`tune.address` / RAY_ADDRESS) or starts a local Ray. Used by the tune stage and by preprocessing.

RAY_ADDRESS is an environment variable, not a DVC dependency: where a stage runs does not change what it writes
(the preprocessing shards are byte-identical either way), so a changed address re-runs nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from multimodal.pipeline.offline import TELEMETRY_OFF

RayAddress = str | None  # `tune.address`: a Ray cluster for tune and preprocess; None: none (or RAY_ADDRESS)

logger = logging.getLogger(__name__)


def ray_home(project_dir: Path) -> Path:
    """A HOME for Ray holding `ray_bootstrap_config.yaml`: Ray 2.60 then skips its cloud-metadata probe."""
    home = project_dir.resolve() / ".ray" / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    return home


def ray_env(project_dir: Path, joining: bool = False) -> dict[str, str]:
    """Environment for any Ray process (the driver, `ray start`): no usage stats, no metadata probe.

    `joining`: for a driver that joins a cluster by address. Ray 2.60 writes an auth token under HOME at the first
    local `ray.init`, and a `ray start` cluster then requires it; a joining driver sends it only with
    RAY_AUTH_MODE=token (Ray sets that itself only for clusters it starts).
    """
    home = ray_home(project_dir)
    env = {**TELEMETRY_OFF, "HOME": str(home)}
    token = any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
    if joining and "RAY_AUTH_MODE" not in os.environ and (token or (home / ".ray" / "auth_token").exists()):
        env["RAY_AUTH_MODE"] = "token"
    return env


def cluster_address(configured: str | None) -> str | None:
    """The cluster to join: `tune.address` from params, else the RAY_ADDRESS environment variable, else None."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def join_ray(address: str | None, project_dir: Path, *, runtime_env: dict[str, Any] | None = None,
             **local_init: Any) -> str | None:
    """Join the cluster at `address`, or start a local Ray with `local_init` (ray.init keywords) when it is None;
    returns `address`. `runtime_env` applies to this driver's job (a joined cluster only).

    Callers that must never start a local Ray (preprocessing) call this only with an address.
    """
    # Before `import ray`: Ray reads some of these (the auth mode) once, at import.
    os.environ.update(ray_env(project_dir, joining=bool(address)))
    if not address:
        # The local node uses the loopback address: Ray otherwise finds "its" address with a UDP connect() to a
        # public resolver (8.8.8.8) in the driver and its workers. Ray reads this at import; besides the address
        # it only refuses `ray start --address` (other nodes joining), which a local study never does.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)
        logger.info("joined the Ray cluster at %s", address)
    else:
        # "local": never the cluster a past `ray start` left in /tmp/ray/ray_current_cluster.
        ray.init(address="local", include_dashboard=False, log_to_driver=True, **local_init)
    return address

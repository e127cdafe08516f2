"""The `flow` section of params.yaml: the Prefect flow's limits (timeouts, retries, waiting for the workspace).

No stage reads it (no `dvc.yaml` stage lists it), so changing a timeout re-runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from multimodal.pipeline.params import ParamsError, Schema, Strict, did_you_mean, load_keys


class Flow(Strict):
    timeout_s: PositiveFloat  # a whole run
    stage_timeout_s: PositiveFloat  # a stage without its own entry in stage_timeouts
    stage_timeouts: dict[str, PositiveFloat]  # by `dvc.yaml` name; `preprocess` covers `preprocess@<m>`
    lock_retries: NonNegativeInt  # retries of a stage that found DVC's lock held by another process
    lock_retry_delay_s: NonNegativeFloat
    workspace_wait_s: NonNegativeFloat  # how long a second run waits for the workspace before it is refused
    server_startup_timeout_s: PositiveInt  # Prefect's temporary server (no PREFECT_API_URL); Prefect takes an int

    def stage_timeout(self, stage: str) -> tuple[float, str]:
        """The limit of `stage` (`preprocess@image`) and the params key it comes from, for the error message."""
        for key in (stage, stage.split("@")[0]):
            if key in self.stage_timeouts:
                return self.stage_timeouts[key], f"flow.stage_timeouts.{key}"
        return self.stage_timeout_s, "flow.stage_timeout_s"

    def check_stages(self, stages: Sequence[str]) -> None:
        """A `stage_timeouts` key that names no stage is a typo: refuse it before anything runs."""
        names = sorted({*stages, *(s.split("@")[0] for s in stages)})
        unknown = [key for key in self.stage_timeouts if key not in names]
        if unknown:
            raise ParamsError("params.yaml has problem(s):\n" + "\n".join(
                f"  flow.stage_timeouts.{key}: no such stage in dvc.yaml{did_you_mean(key, names)}"
                for key in unknown))


FLOW = Schema({"flow": Flow})


def load_flow(workspace: Path) -> Flow:
    """The `flow` section of `workspace`'s params.yaml, validated (every problem in one ParamsError)."""
    return load_keys(workspace / "params.yaml", FLOW, ("flow",)).flow

"""Resuming an interrupted Ray Tune study: trials that finished are not trained again, the outcome is unchanged.

A study is resumed (`Tuner.restore`) only when it was started for the same inputs: a fingerprint of the tune
params, the code the stage runs and the contents of its input folders is stored beside the study; anything else
starts a fresh study. Ray saves a study's trials and searcher but not ASHA's rungs, so `ResumableASHA` rebuilds them
by replaying the results the trials recorded, and answers a re-reported epoch with the decision it had made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from multimodal.pipeline.stage_deps import input_files
from multimodal.storage.io import write_json

logger = logging.getLogger(__name__)

RESULT_FILES = ("result.json", "progress.csv")  # what Ray appends to, per trial, once per report


def _digest_files(root: Path, paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def study_fingerprint(params: Any, project_dir: Path) -> dict[str, str]:
    """What a study's outcome depends on: tune's params, the code `stages.tune` imports (a modality module of the
    user's included), the local checkpoint folders params name, the data it reads."""
    import ray

    paths = params.base.paths
    knobs = {"tune": params.tune.model_dump(mode="json"), "seed": params.base.seed, "device": params.base.device,
             "modalities": list(params.preprocess.modalities), "ray": ray.__version__}
    # The user's modality modules and local checkpoint folders are inputs too (multimodal.pipeline.params_inputs).
    code = input_files(project_dir, "stages.tune", params.raw_params(), list(params.preprocess.modalities))
    data = {}
    for folder in (paths.validated, paths.preprocessed, paths.aligned):
        root = project_dir / folder
        data[str(folder)] = _digest_files(project_dir, [p for p in root.rglob("*") if p.is_file()])
    return {"params": hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest(),
            "code": _digest_files(project_dir, code), **{f"data:{k}": v for k, v in data.items()}}


def fingerprint_file(study: Path) -> Path:
    return study.with_name(f"{study.name}.fingerprint.json")


def prepare_study(study: Path, fingerprint: dict[str, str]) -> bool:
    """True: `study` holds a restorable study of the same fingerprint, to resume. False: it was removed (if there),
    and the new fingerprint recorded, for a fresh study."""
    from ray.tune import Tuner

    stored = fingerprint_file(study)
    same = stored.exists() and json.loads(stored.read_text()) == fingerprint
    # Ray writes the trials' state some seconds into a study: a study killed before has nothing to resume.
    if same and Tuner.can_restore(str(study)) and any(study.glob("experiment_state-*.json")):
        for name in RESULT_FILES:
            for path in study.glob(f"*/{name}"):
                drop_partial_line(path)
        return True
    if study.exists():
        logger.info("starting a fresh study: %s", "its inputs changed" if stored.exists() and not same
                    else "the one there cannot be resumed")
    shutil.rmtree(study, ignore_errors=True)
    write_json(stored, fingerprint)
    return False


def drop_partial_line(path: Path) -> None:
    """Cut a last line a killed process left unterminated: Ray appends a report per line and would misread it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
        logger.warning("%s: dropped a half-written last line", path)


def recorded_results(study: Path) -> list[dict[str, Any]]:
    """Every report the study's trials recorded, in the order they were made."""
    reports = []
    for path in study.glob("*/result.json"):
        reports += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(reports, key=lambda r: (r.get("timestamp", 0), r.get("trial_id", ""), r.get("training_iteration", 0)))


class _Replayed:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive `Tuner.restore`: at the first trial it sees it replays the results recorded in
    `study` (none in a fresh study), in the order they were made, so every later decision is the one an
    uninterrupted study makes; a re-reported epoch (a trial resumed from an earlier checkpoint) gets its old answer.
    """

    def __init__(self, study: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._study = study
        self._decisions: dict[tuple[str, Any], str] | None = None

    def _replay(self) -> None:
        self._decisions = {}
        if len(self._brackets) != 1:  # a trial's bracket is drawn at random: several cannot be replayed
            return
        reports = recorded_results(Path(self._study))
        for report in reports:
            if self._time_attr in report and self._metric in report:
                key = (report["trial_id"], report[self._time_attr])
                decision = self._brackets[0].on_result(
                    _Replayed(report["trial_id"]), report[self._time_attr], self._metric_op * report[self._metric])
                last = report[self._time_attr] >= self._max_t and self._stop_last_trials
                self._decisions.setdefault(key, self.STOP if last else decision)
        if reports:
            logger.info("ASHA: replayed %d recorded reports of %d trials", len(reports),
                        len({r["trial_id"] for r in reports}))

    def on_trial_add(self, tune_controller, trial) -> None:
        if self._decisions is None:
            self._replay()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decided = (self._decisions or {}).get((trial.trial_id, result.get(self._time_attr)))
        return decided if decided is not None else super().on_trial_result(tune_controller, trial, result)

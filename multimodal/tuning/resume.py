"""Resuming an interrupted Ray Tune study: trials that finished are not trained again, the outcome is unchanged.

A study is resumed (`Tuner.restore`) only when its last run was cut off (killed, out of memory, the machine lost)
and it was started for the same inputs: a fingerprint of the tune params, the code the stage runs and the contents of
its input folders is stored beside the study. Unfinished trials continue from their last checkpoint and errored ones
are tried again from theirs. A run that ended, with a best model or with "no trial succeeded", closes its study
(`end_study`): the next run of the stage starts a fresh one. DVC does not tell a stage it was forced, but with
unchanged inputs only a forced run (or lost outputs) runs the stage again after it ended, so `dvc repro --force`
gets a fresh study. Anything else starts a fresh study too.

Ray saves a study's trials and searcher but not ASHA's rungs, so `ResumableASHA` rebuilds them by replaying the
results the trials recorded, and answers a re-reported epoch with the decision it had made.
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
from multimodal.storage.io import write_json, write_text_atomic
from multimodal.tuning import ray_private

logger = logging.getLogger(__name__)


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


def ended_file(study: Path) -> Path:
    """Present once a run of the study ended (`end_study`); holds how."""
    return study.with_name(f"{study.name}.ended")


def end_study(study: Path, outcome: str) -> None:
    """Close `study`: its run ended with `outcome` (a best model, or no trial succeeded); the next run of the stage
    starts a fresh one. Called only once the outcome is delivered (outputs written, or the failure reported)."""
    write_text_atomic(ended_file(study), outcome + "\n")


def prepare_study(study: Path, fingerprint: dict[str, str]) -> bool:
    """True: `study` holds a restorable study of the same fingerprint whose run was cut off, to resume. False: it
    was removed (if there), and the new fingerprint recorded, for a fresh study."""
    from ray.tune import Tuner

    stored, ended = fingerprint_file(study), ended_file(study)
    same = stored.exists() and json.loads(stored.read_text()) == fingerprint
    # Ray writes the trials' state some seconds into a study: a study killed before has nothing to resume.
    if same and not ended.exists() and Tuner.can_restore(str(study)) and ray_private.has_trial_states(study):
        for path in ray_private.result_files(study):
            drop_partial_line(path)
        return True
    if ended.exists():
        logger.info("starting a fresh study: the last run of the one in %s ended (%s); only a run that was cut off "
                    "is continued", study, ended.read_text().strip())
    elif study.exists():
        logger.info("starting a fresh study: %s", "its inputs changed" if stored.exists() and not same
                    else "the one there cannot be resumed")
    shutil.rmtree(study, ignore_errors=True)
    ended.unlink(missing_ok=True)
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
    order = lambda r: (r.get("timestamp", 0), r.get("trial_id", ""), r.get("training_iteration", 0))
    return sorted(ray_private.recorded_reports(study), key=order)


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
        asha = ray_private.asha_settings(self)
        if asha.brackets != 1:  # a trial's bracket is drawn at random: several cannot be replayed
            return
        reports = recorded_results(Path(self._study))
        for report in reports:
            if asha.time_attr in report and asha.metric in report:
                key = (report["trial_id"], report[asha.time_attr])
                decision = ray_private.bracket_decision(self, report["trial_id"], report[asha.time_attr],
                                                        asha.metric_op * report[asha.metric])
                last = report[asha.time_attr] >= asha.max_t and asha.stop_last_trials
                self._decisions.setdefault(key, self.STOP if last else decision)
        if reports:
            logger.info("ASHA: replayed %d recorded reports of %d trials", len(reports),
                        len({r["trial_id"] for r in reports}))

    def on_trial_add(self, tune_controller, trial) -> None:
        if self._decisions is None:
            self._replay()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get(ray_private.asha_settings(self).time_attr)
        decided = (self._decisions or {}).get((trial.trial_id, epoch))
        return decided if decided is not None else super().on_trial_result(tune_controller, trial, result)

"""The model card of the report: the data, the model, its intended use, what it was compared with, its limits.

Everything measurable comes from the run's files (validated manifest, evaluate.json, best_config.yaml); what only
a person knows (intended use, known limitations) comes from `params.yaml`'s `report` section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from multimodal.data.manifest import SPLITS, modality_columns
from multimodal.reporting.template import Bullets, Facts, Heading, Section, Table, Text, fmt

FUSED = "fused"  # the model names multimodal.evaluation.evaluate writes into evaluate.json
# Kinds of the other models, by the prefix of their evaluate.json name (multimodal.evaluation.evaluate,
# multimodal.evaluation.baseline).
KINDS = (("fused_only_", "the fused model shown one modality"), ("unimodal_", "deep model of one modality"),
         ("trial_", "another trial's fused model (the ensemble's single best on validation)"),
         ("ensemble", "weighted average of this run's models, weights chosen on validation"),
         ("baseline_early_fusion", "classical: logistic regression on all modalities' features"),
         ("baseline_", "classical: logistic regression on one modality's features"))


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def pts(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f} pts"


def interval(low: float | None, high: float | None, unit=pct) -> str:
    """`[90.0%, 94.7%]`, or with `unit=pts` `[+1.0, +6.3] pts`."""
    if low is None or high is None:
        return ""
    if unit is pts:
        return f"[{100 * low:+.1f}, {100 * high:+.1f}] pts"
    return f"[{unit(low)}, {unit(high)}]"


def model_kind(name: str) -> str:
    return next((kind for prefix, kind in KINDS if name.startswith(prefix)), "fused model" if name == FUSED else "")


def _present(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].fillna("").astype(str).str.len() > 0


def split_table(frame: pd.DataFrame) -> Table:
    """Per split: rows, groups (and how many of them train also holds), classes, smallest class, modality cover."""
    modalities = modality_columns(frame)
    has_group = "group" in frame and _present(frame, "group").any()
    train_groups = set(frame.loc[frame["split"] == "train", "group"]) if has_group else set()
    rows = []
    for split in [s for s in SPLITS if (frame["split"] == s).any()]:
        part = frame[frame["split"] == split]
        counts = part["label"].value_counts()
        groups = set(part.loc[_present(part, "group"), "group"]) if has_group else set()
        shared = len(groups & train_groups) if split != "train" else None
        rows.append([split, len(part), len(groups) if has_group else None, shared, counts.size,
                     f"{counts.idxmin()}: {counts.min()} rows",
                     *[pct(_present(part, m).mean()) for m in modalities]])
    return Table(["split", "rows", "groups", "groups also in train", "classes", "smallest class",
                  *[f"{m} present" for m in modalities]], rows, caption="Splits of the validated data")


def data_section_blocks(frame: pd.DataFrame, validation: Mapping[str, Any], dataset: str) -> list:
    facts = [("source", dataset), ("rows in the manifest", validation.get("rows")),
             ("rows kept after validation", validation.get("valid_rows")),
             ("rows quarantined", validation.get("quarantined_rows")),
             ("classes", ", ".join(map(str, validation.get("labels") or sorted(frame["label"].unique(), key=str)))),
             ("modalities", ", ".join(modality_columns(frame)) or "none")]
    return [Facts(facts), split_table(frame)]


def model_blocks(evaluate: Mapping[str, Any], best_config: Mapping[str, Any], tune: Mapping[str, Any],
                 selection: str) -> list:
    chosen = {k: best_config[k] for k in ("fusion", "strategy", "lr", "dropout", "weight_decay", "batch_size")
              if k in best_config}
    chosen.setdefault("fusion", evaluate.get("fusion"))
    best = tune.get(f"best_{selection}")
    facts = [*chosen.items(),
             ("selected by", f"{selection} on the validation split: {fmt(best)} (trial {tune.get('best_trial', '?')}, "
                             f"epoch {tune.get('best_epoch', '?')}, best of {tune.get('trials', '?')} trials)")]
    return [Facts(facts)]


def comparison_table(evaluate: Mapping[str, Any]) -> Table:
    """Every other model beside the fused one: its accuracy where it sees input, and the paired difference."""
    models, paired = evaluate.get("models", {}), evaluate.get("paired", {})
    rows = []
    for name, score in models.items():
        if name == FUSED:
            continue
        pair = paired.get(name, {})
        low, high = (pair.get(f"{FUSED}_minus_ci95") or (None, None))
        rows.append([name, model_kind(name), pct(score.get("accuracy")), interval(*(score.get("ci95") or (None, None))),
                     score.get("n"), pts(pair.get(f"{FUSED}_minus")), interval(low, high, pts), pair.get("n")])
    return Table(["model", "kind", "accuracy", "95% interval", "n", "fused minus model", "95% interval", "n paired"],
                 rows, caption="What the fused model was compared with (test split; each model on the rows it sees, "
                               "differences paired on the rows both see)")


def measured_limits(frame: pd.DataFrame, evaluate: Mapping[str, Any], resamples: int) -> list[str]:
    """What the figures themselves say about their reach."""
    test = frame[frame["split"] == "test"]
    out = []
    groups = set(test.loc[_present(test, "group"), "group"]) if "group" in test else set()
    train_groups = set(frame.loc[frame["split"] == "train", "group"]) if groups else set()
    scope = f"Measured on the test split only: {len(test)} rows"
    if groups:
        shared = len(groups & train_groups)
        scope += (f" from {len(groups)} groups, none of them seen in training." if not shared else
                  f" from {len(groups)} groups, {shared} of them also in training: those figures are on seen groups.")
    out.append(scope + " Not tested: data from any other source or recording set-up, classes outside the ones "
                       "listed, and inputs that fail validation (the pipeline refuses or quarantines them).")
    missing = [f"{m} {pct(1 - _present(test, m).mean())}" for m in modality_columns(test)]
    if missing:
        out.append("Rows without a modality in the test split: " + ", ".join(missing) + "; other rates of "
                   "missing modalities are only covered where a robustness table below says so.")
    fused = evaluate.get("models", {}).get(FUSED, {})
    if fused.get("ci95"):
        low, high = fused["ci95"]
        out.append(f"Sampling error: the fused accuracy's 95% interval is {pct(low)} to {pct(high)} "
                   f"({resamples} bootstrap resamples of {fused.get('n')} rows); smaller differences are not shown "
                   "by this test set.")
    labels = frame["label"].nunique()
    alone = sorted(((n.removeprefix("unimodal_"), s.get("accuracy")) for n, s in evaluate.get("models", {}).items()
                    if n.startswith("unimodal_")), key=lambda item: -(item[1] or 0))
    if alone and labels:
        out.append("Each modality alone (deep unimodal models): " + ", ".join(f"{m} {pct(a)}" for m, a in alone)
                   + f"; chance is {pct(1 / labels)}.")
    unclear = [name for name, pair in evaluate.get("paired", {}).items()
               if (pair.get(f"{FUSED}_minus_ci95") or [1, 1])[0] <= 0 <= (pair.get(f"{FUSED}_minus_ci95") or [0, 0])[1]]
    if unclear:
        out.append("Not distinguishable from the fused model on this test set (the interval of the difference "
                   "holds 0): " + ", ".join(unclear) + ".")
    return out


def _flat(evaluate: Mapping[str, Any], prefix: str, unit=pct) -> str:
    """A headline figure of evaluate.json with its interval: `92.4% [90.0%, 94.7%]`."""
    low, high = evaluate.get(f"{prefix}_ci95_lo"), evaluate.get(f"{prefix}_ci95_hi")
    return f"{unit(evaluate[prefix])} {interval(low, high, unit)}"


def ensemble_sentence(evaluate: Mapping[str, Any]) -> str:
    """The selected ensemble beside the single best model, and which of the two is the default (chosen on
    validation)."""
    best = evaluate.get("single_best")
    made = (evaluate.get("claims") or {}).get("ensemble_beats_single_best")
    text = (f"Ensemble of this run's models (weights chosen on validation): test accuracy "
            f"{_flat(evaluate, 'ensemble_accuracy')}. " + (made["sentence"] if made else
            f"Against the single best model ({best}, chosen on validation): "
            f"{_flat(evaluate, 'ensemble_minus_single_best', pts)}."))
    # The default is decided on validation rows the weights were not fitted on (2-fold cross-fitting,
    # multimodal.evaluation.ensemble.choose): in sample the ensemble can only gain.
    if evaluate.get("default_model") == "ensemble":
        return text + (" The ensemble is the default model: it beats the single best on validation rows its weights "
                       "were not chosen on (2-fold cross-fitting).")
    return text + (f" The single best ({best}) stays the default model: the ensemble does not beat it on validation "
                   "rows its weights were not chosen on (2-fold cross-fitting).")


def headline(evaluate: Mapping[str, Any]) -> list:
    """The verdict: the fused accuracy, then each claim evaluate made from a paired interval ("shown" only when the
    interval lies above 0, else "not shown" or "worse", with the interval), and the loud line when the classical
    baseline is not shown to be beaten."""
    if "fused_accuracy" not in evaluate:
        return [Text("No evaluation found: run the evaluate stage.", "warning")]
    rows = evaluate.get("fused_accuracy_n")
    claims = evaluate.get("claims") or {}
    parts = [f"Fused model: test accuracy {_flat(evaluate, 'fused_accuracy')} on {rows} rows.",
             *(made["sentence"] for name, made in claims.items() if name != "ensemble_beats_single_best")]
    beaten = claims.get("fused_beats_baseline", {}).get("holds", True)
    blocks = [Text(" ".join(parts), "good" if beaten else "plain")]
    if evaluate.get("ensemble_accuracy") is not None:
        blocks.append(Text(ensemble_sentence(evaluate)))
    if not beaten:
        blocks.append(Text("The fused deep model is NOT shown to beat the classical baseline (logistic regression on "
                           "standard features): check the data, the search space and the augmentation before "
                           "trusting it.", "warning"))
    return blocks


def model_card(frame: pd.DataFrame, validation: Mapping[str, Any], evaluate: Mapping[str, Any],
               best_config: Mapping[str, Any], tune: Mapping[str, Any], *, dataset: str, selection: str,
               intended_use: str, limitations: Sequence[str], resamples: int) -> Section:
    blocks = [
        Heading("Model"), *model_blocks(evaluate, best_config, tune, selection),
        Heading("Intended use"), Text(intended_use),
        Heading("Data"), *data_section_blocks(frame, validation, dataset),
        Heading("Compared with"), comparison_table(evaluate),
        Heading("Limits"), Bullets([*limitations, *measured_limits(frame, evaluate, resamples)]),
    ]
    return Section("model-card", "Model card", blocks)

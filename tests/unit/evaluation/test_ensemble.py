"""Ensemble selection: greedy with replacement on validation rows, members missing a modality drop out of a row."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.evaluation.ensemble import choose, halves, score, select
from multimodal.models.ensemble import EnsembleSpec, combine, ensemble_probabilities

N, C = 40, 3


def member(y: np.ndarray, right: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """(N, C) probabilities: `confidence` on the true class where `right`, on the next class elsewhere."""
    probs = np.full((len(y), C), (1 - confidence) / (C - 1))
    guess = np.where(right, y, (y + 1) % C)
    probs[np.arange(len(y)), guess] = confidence
    return probs


def labels() -> np.ndarray:
    return np.arange(N) % C


def test_selection_with_replacement_picks_the_better_member_first():
    y = labels()
    rng = np.random.default_rng(0)
    strong, weak = rng.random(N) < 0.9, rng.random(N) < 0.6
    probs = {"weak": member(y, weak), "strong": member(y, strong)}  # listed first: order does not decide
    for metric in ("log_likelihood", "accuracy"):
        selection = select(probs, y, metric, rounds=10)
        assert selection.counts["strong"] >= 1 and max(selection.counts, key=selection.counts.get) == "strong"
        assert selection.trajectory[0] == pytest.approx(score(probs["strong"], y, metric))
        assert selection.trajectory == sorted(selection.trajectory)  # the kept prefix never got worse
    # With replacement: a member is added again when that helps (here it always does: `weak` only adds errors).
    assert select(probs, y, "log_likelihood", rounds=5).counts == {"weak": 0, "strong": 1}


def test_complementary_members_are_mixed_and_beat_each_alone():
    y = labels()
    half = np.arange(N) < N // 2
    # Each member is confidently right on its half and mildly wrong on the other: together they are right.
    a, b = member(y, half, 0.9), member(y, ~half, 0.9)
    a[~half], b[half] = 1.0 / C, 1.0 / C  # flat on the half it does not know
    selection = select({"a": a, "b": b}, y, "log_likelihood", rounds=10)
    assert selection.counts["a"] >= 1 and selection.counts["b"] >= 1
    assert selection.trajectory[-1] > max(score(a, y, "log_likelihood"), score(b, y, "log_likelihood"))


def test_a_member_missing_the_modality_drops_out_of_that_row():
    fused = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    audio_only = np.array([[0.1, 0.1, 0.8], [np.nan, np.nan, np.nan]])  # row 1 lacks audio
    out = combine([fused, audio_only], [0.25, 0.75])
    assert out[0] == pytest.approx(0.25 * fused[0] + 0.75 * audio_only[0])
    assert out[1] == pytest.approx(fused[1])  # weights renormalised over the members that see the row
    # A row nobody sees stays unpredicted (NaN), and is scored as a uniform guess or as wrong.
    nobody = combine([audio_only], [1.0])
    assert np.isnan(nobody[1]).all()
    assert score(nobody, np.array([2, 0]), "accuracy") == 0.5
    assert score(nobody, np.array([2, 0]), "log_likelihood") == pytest.approx((np.log(0.8) + np.log(1 / 3)) / 2)


def test_a_unimodal_member_is_judged_on_every_row_during_selection():
    """A member right on the few rows it sees does not win round one over one that covers every row."""
    y = labels()
    sees = np.arange(N) < 8
    partial = member(y, np.ones(N, bool), 0.99)
    partial[~sees] = np.nan
    full = member(y, np.random.default_rng(1).random(N) < 0.8)
    spec = choose({"fused": full, "unimodal_audio": partial}, {"fused": ["image", "audio"], "unimodal_audio":
                  ["audio"]}, {"fused": "../models/best", "unimodal_audio": "../models/unimodal/audio"}, y,
                  ["0", "1", "2"], "accuracy", rounds=5)
    assert spec.validation["trajectory"][0] == pytest.approx(score(full, y, "accuracy"))
    assert spec.single_best == "fused"  # the partial member cannot be the single best: it misses rows
    assert spec.validation["members"]["unimodal_audio"] == {**spec.validation["members"]["unimodal_audio"],
                                                            "accuracy": 1.0, "n": 8}


def test_the_single_best_stays_the_default_when_the_ensemble_does_not_beat_it(tmp_path):
    y = labels()
    best = member(y, np.ones(N, bool), 0.9)  # right everywhere: nothing can beat it on validation accuracy
    other = member(y, np.random.default_rng(2).random(N) < 0.5)
    refs = {"fused": "../models/best", "baseline_image": None}
    spec = choose({"fused": best, "baseline_image": other}, {"fused": ["image"], "baseline_image": ["image"]}, refs,
                  y, ["0", "1", "2"], "accuracy", rounds=5)
    assert spec.default == "fused" and spec.weights == {"fused": 1.0}
    spec.save(tmp_path)
    again = EnsembleSpec.load(tmp_path)  # JSON, members by reference
    assert again == spec and again.members[0].path == "../models/best"
    assert ensemble_probabilities(again, {"fused": best, "baseline_image": other}) == pytest.approx(best)
    mixed = choose({"a": member(y, np.arange(N) % 2 == 0), "b": member(y, np.arange(N) % 2 == 1, 0.9)},
                   {"a": ["image"], "b": ["audio"]}, {"a": "x", "b": "../data/baseline/models/b"}, y,
                   ["0", "1", "2"], "log_likelihood", 10, classical={"b"})
    assert mixed.default == "ensemble" and mixed.members[1].kind == "classical"
    assert mixed.members[1].path == "../data/baseline/models/b"
    crossed = mixed.validation["cross_fitted"]  # the ensemble wins on held-out rows too
    assert crossed["ensemble"]["all_rows_log_likelihood"] > crossed["single_best"]["all_rows_log_likelihood"]


def test_weights_depend_on_the_validation_rows_only():
    """`select` sees one split: the same validation probabilities and labels give the same weights whatever else."""
    y = labels()
    rng = np.random.default_rng(3)
    probs = {name: member(y, rng.random(N) < p) for name, p in (("a", 0.7), ("b", 0.75), ("c", 0.6))}
    first = select(probs, y, "log_likelihood", rounds=15)
    assert select({k: v.copy() for k, v in probs.items()}, y.copy(), "log_likelihood", rounds=15) == first
    shuffled = rng.permutation(N)  # other labels on these rows: other weights (the test can fail)
    assert select(probs, y[shuffled], "log_likelihood", rounds=15).trajectory != first.trajectory


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="ensemble metric 'auc'"):
        select({"a": np.full((2, 2), 0.5)}, np.array([0, 1]), "auc", 3)


def test_the_default_is_decided_on_rows_the_weights_were_not_fitted_on():
    """One calibrated member (the labels are drawn from its probabilities: nothing can beat it in expectation) and
    twenty members of pure noise. On the rows it is fitted on, greedy selection always finds noise that happens to
    help, so the in-sample comparison prefers the ensemble; cross-fitted, the single best stays the default."""
    rng = np.random.default_rng(0)
    n = 120
    good = rng.dirichlet(np.ones(C), size=n)
    y = np.array([rng.choice(C, p=p) for p in good])
    probs = {"fused": good, **{f"noise_{i}": rng.dirichlet(np.ones(C), size=n) for i in range(20)}}
    spec = choose(probs, {name: ["image"] for name in probs}, {name: f"../{name}" for name in probs}, y,
                  ["0", "1", "2"], "log_likelihood", rounds=25, seed=0)
    in_sample, crossed = spec.validation["in_sample"], spec.validation["cross_fitted"]
    assert len(spec.weights) > 1 and in_sample["ensemble"] > in_sample["single_best"]  # what used to decide
    assert crossed["ensemble"]["all_rows_log_likelihood"] <= crossed["single_best"]["all_rows_log_likelihood"]
    assert spec.default == "fused" and spec.validation["default_by"] == "cross_fitted"
    assert [fold["n_scored_on"] for fold in crossed["folds"]] == [n // 2, n // 2]
    assert spec.weights == select(probs, y, "log_likelihood", 25).weights  # saved weights: every validation row


def test_halves_keep_groups_whole_and_follow_the_seed():
    groups = [f"speaker{i // 3}" for i in range(30)] + [""] * 6  # ten speakers of three rows, six rows of none
    first = halves(len(groups), groups, seed=0)
    for g in set(groups) - {""}:
        assert len({first[i] for i in range(len(groups)) if groups[i] == g}) == 1, g
    assert abs(int(first.sum()) - len(groups) // 2) <= 3  # balanced up to a group
    assert (halves(len(groups), groups, seed=0) == first).all()
    assert any((halves(len(groups), groups, seed=s) != first).any() for s in (1, 2, 3))
    assert halves(9, None, seed=0).sum() in (4, 5)  # without groups, each row is its own


def test_too_few_validation_groups_keep_the_single_best():
    y = labels()
    probs = {"a": member(y, np.arange(N) % 2 == 0), "b": member(y, np.arange(N) % 2 == 1, 0.9)}
    spec = choose(probs, {"a": ["image"], "b": ["audio"]}, {"a": "x", "b": "y"}, y, ["0", "1", "2"],
                  "log_likelihood", 10, groups=["one speaker"] * N)
    assert spec.validation["cross_fitted"] is None and spec.default == spec.single_best
    assert spec.validation["in_sample"]["ensemble"] > spec.validation["in_sample"]["single_best"]

"""Fair scoring on hand-checkable prediction vectors: rows seen, paired differences, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.evaluation.scoring import (
    ABSTAIN,
    accuracy_interval,
    best_by_validation,
    compare,
    model_scores,
    paired_difference,
    per_class_scores,
    rng_for,
    top_label,
)

A = ABSTAIN
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
# Has no input on rows 1, 4, 7; right on 4 of the 5 rows it sees (wrong on row 5).
UNIMODAL = np.array([0, A, 2, 0, A, 1, 0, A])
FUSED = np.array([0, 1, 2, 0, 1, 2, 1, 1])  # wrong on row 6 only


def test_a_model_is_scored_on_the_rows_where_its_input_exists():
    got = model_scores("unimodal", Y, UNIMODAL, 500, seed=0)
    assert got["n"] == 5 and got["accuracy"] == pytest.approx(4 / 5)
    assert got["ci95"][0] <= 0.8 <= got["ci95"][1]
    assert model_scores("fused", Y, FUSED, 500, seed=0)["n"] == 8


def test_fused_against_a_unimodal_model_paired_on_shared_rows_and_on_all_rows_with_abstentions_wrong():
    out = compare("fused", Y, {"fused": FUSED, "unimodal": UNIMODAL}, 500, seed=0)
    paired = out["paired"]["unimodal"]
    # Rows 0, 2, 3, 5, 6: fused right on 4 (not 6), unimodal right on 4 (not 5).
    assert paired["n"] == 5
    assert paired["fused_accuracy"] == pytest.approx(0.8) and paired["accuracy"] == pytest.approx(0.8)
    assert paired["fused_minus"] == 0.0
    # All 8 rows: fused 7/8, unimodal 4/8 (its 3 abstentions count wrong).
    abstain = out["all_rows_abstain_wrong"]["unimodal"]
    assert abstain["n"] == 8 and abstain["accuracy"] == pytest.approx(0.5)
    assert abstain["fused_minus"] == pytest.approx(7 / 8 - 4 / 8)
    low, high = abstain["fused_minus_ci95"]
    assert low <= 3 / 8 <= high


def test_paired_difference_counts_only_discordant_rows():
    a = np.array([1, 1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 1], bool)
    got = paired_difference(a, b, 2000, np.random.default_rng(0))
    assert got["n"] == 6 and got["difference"] == pytest.approx((2 - 1) / 6)
    low, high = got["ci95"]
    assert low <= 1 / 6 <= high and -1 <= low < high <= 1
    # Identical models never differ, whatever the resample.
    assert paired_difference(a, a, 500, np.random.default_rng(0))["ci95"] == [0.0, 0.0]


def test_intervals_are_deterministic_per_seed_and_shrink_with_n():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 1, 0, 1, 0], bool)
    first = paired_difference(a, b, 1000, rng_for(42, "x"))
    assert paired_difference(a, b, 1000, rng_for(42, "x")) == first
    assert paired_difference(a, b, 1000, rng_for(43, "x"))["ci95"] != first["ci95"]
    wide = np.diff(first["ci95"])[0]
    narrow = np.diff(paired_difference(np.tile(a, 20), np.tile(b, 20), 1000, rng_for(42, "x"))["ci95"])[0]
    assert narrow < wide / 3  # 20x the rows: about sqrt(20) = 4.5x narrower
    assert np.diff(accuracy_interval(np.tile(a, 20), 1000, rng_for(0, "y")))[0] < \
        np.diff(accuracy_interval(a, 1000, rng_for(0, "y")))[0]


def test_multinomial_shortcut_matches_resampling_the_rows():
    """The cell-count bootstrap is the row bootstrap: same percentile interval, up to Monte Carlo noise."""
    gen = np.random.default_rng(1)
    a, b = gen.random(300) < 0.8, gen.random(300) < 0.7
    rows = gen.integers(0, 300, size=(20000, 300))
    naive = np.quantile(a[rows].mean(1) - b[rows].mean(1), [0.025, 0.975])
    fast = paired_difference(a, b, 20000, np.random.default_rng(2))["ci95"]
    assert np.allclose(fast, naive, atol=0.01)
    naive_acc = np.quantile(a[rows].mean(1), [0.025, 0.975])
    assert np.allclose(accuracy_interval(a, 20000, np.random.default_rng(3)), naive_acc, atol=0.01)


def test_best_is_chosen_by_validation_and_ties_go_to_the_first():
    assert best_by_validation({"image": 0.7, "audio": 0.9, "text": 0.3}) == "audio"
    assert best_by_validation({"image": 0.9, "audio": 0.9}) == "image"
    assert best_by_validation({}) is None


def test_per_class_precision_recall_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, A])  # row 4 unseen: class c has no row the model saw
    got = {row["class"]: row for row in per_class_scores(y, pred, ["a", "b", "c"])}
    # a: predicted 3 times, right twice, 2 true -> P 2/3, R 1, F1 .8; b: predicted once, right, 2 true -> P 1, R .5.
    assert got["a"] == {"class": "a", "precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                        "support": 2}
    assert got["b"] == {"class": "b", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert got["c"] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_top_label_abstains_where_a_model_has_no_probabilities():
    probs = np.array([[0.2, 0.8], [np.nan, np.nan], [0.5, 0.5]])
    assert top_label(probs).tolist() == [1, A, 0]  # a tie goes to the first class, as argmax does

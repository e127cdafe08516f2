"""Claims read from paired 95% intervals: shown only when the interval lies above 0."""

from __future__ import annotations

import pytest

from multimodal.evaluation.claims import NOT_SHOWN, SHOWN, WORSE, claim, headline_keys, verdict


@pytest.mark.parametrize("interval, expected", [([0.01, 0.05], SHOWN), ([-0.002, 0.058], NOT_SHOWN),
                                                ([0.0, 0.05], NOT_SHOWN), ([-0.05, -0.01], WORSE),
                                                ([-0.05, 0.0], NOT_SHOWN), (None, NOT_SHOWN)])
def test_verdict_follows_the_interval(interval, expected):
    assert verdict(interval) == expected


def test_a_claim_with_an_interval_crossing_zero_reads_not_shown():
    # The case: a positive point estimate whose interval is [-0.2, +5.8] points.
    made = claim("The fused model beats the classical baseline", 0.028, [-0.002, 0.058], 450)
    assert made["holds"] is False and made["verdict"] == "not shown"
    assert made["sentence"] == ("The fused model beats the classical baseline: not shown (+2.8 points, 95% interval "
                                "[-0.2, +5.8], 450 rows paired; the interval holds 0).")
    assert headline_keys("fused_beats_baseline", made) == {"fused_beats_baseline": False,
                                                           "fused_beats_baseline_verdict": "not shown"}


def test_shown_and_worse_say_why_and_no_rows_is_not_shown():
    assert claim("A", 0.1, [0.05, 0.15], 10)["sentence"].endswith("; the whole interval is above 0).")
    worse = claim("A", -0.1, [-0.15, -0.05], 10)
    assert worse["holds"] is False and "worse" in worse["sentence"] and "below 0" in worse["sentence"]
    assert claim("A", None, None, 0)["sentence"] == "A: not shown (no row both models see)."

"""Paired statistics of the verdict, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from steerlight.eval.report import mcnemar_exact, paired_bootstrap_ci, verdict


def test_mcnemar_exact_by_hand():
    # 1 question only the baseline gets right, 5 only the steered model: n = 6 discordant.
    baseline = [True, False, False, False, False, False, True, False]
    steered = [False, True, True, True, True, True, True, False]
    b, c, p = mcnemar_exact(baseline, steered)
    assert (b, c) == (1, 5)
    assert p == pytest.approx(2 * (1 + 6) / 2**6)  # 2 * P(X <= 1), X ~ Bin(6, 1/2) = 0.21875
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    assert mcnemar_exact([True] * 3, [False] * 3)[2] == pytest.approx(2 / 8)


def test_bootstrap_ci_by_hand():
    # Differences: six +1, four 0. A resampled mean is Bin(10, 0.6) / 10, whose 2.5% and 97.5%
    # quantiles are 0.3 (P(X<=2)=0.012, P(X<=3)=0.055) and 0.9 (P(X<=8)=0.954, P(X<=9)=0.994).
    baseline = [False] * 6 + [True] * 2 + [False] * 2
    steered = [True] * 6 + [True] * 2 + [False] * 2
    diff, low, high = paired_bootstrap_ci(baseline, steered, n_boot=20_000, seed=0)
    assert diff == pytest.approx(0.6)
    assert (low, high) == (pytest.approx(0.3), pytest.approx(0.9))
    # Pairing matters: both models score 50% either way, but only the swap is uncertain.
    agree = paired_bootstrap_ci([True, True, False, False], [True, True, False, False])
    swap = paired_bootstrap_ci([True, True, False, False], [False, False, True, True])
    assert agree == (0.0, 0.0, 0.0)
    assert swap[0] == 0.0 and swap[1] <= -0.5 and swap[2] >= 0.5


def test_verdict_counts():
    records = [
        {
            "baseline_correct_strict": b,
            "steered_correct_strict": s,
            "baseline_correct_flexible": True,
            "steered_correct_flexible": s,
        }
        for b, s in [(True, True), (True, False), (False, True), (False, True)]
    ]
    out = verdict(records)
    assert out["questions"] == 4
    assert out["strict"]["baseline_accuracy"] == 0.5 and out["strict"]["steered_accuracy"] == 0.75
    assert (
        out["strict"]["only_baseline_correct"] == 1 and out["strict"]["only_steered_correct"] == 2
    )
    assert out["flexible"]["difference"] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap_ci([], [])

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


def test_min_detectable_difference_by_hand():
    from steerlight.eval.stats import min_detectable_difference

    # 400 questions, 100 discordant: 2.8 * sqrt(0.25 / 400) = 0.07.
    baseline = [True] * 50 + [False] * 50 + [True] * 300
    steered = [False] * 50 + [True] * 50 + [True] * 300
    assert min_detectable_difference(baseline, steered) == pytest.approx(0.07)
    # No discordance at all (a model at 0% both ways): McNemar's exact test still needs 6
    # discordant questions, so 6 / n is the floor, never 0.
    assert min_detectable_difference([False] * 500, [False] * 500) == pytest.approx(6 / 500)
    with pytest.raises(ValueError, match="non-empty"):
        min_detectable_difference([], [])


def test_verdict_reports_answer_lengths_and_capped_answers():
    from steerlight.eval.report import format_verdict, paired_record

    golds = ["3", "4", "5", "6"]
    texts = {"baseline": ["#### 3", "#### 1 #### 1", "x", "x"], "steered": ["#### 3"] * 4}
    lengths = [(2, 2), (10, 2), (10, 2), (10, 3)]  # (baseline, steered) tokens; cap 10
    records = [
        paired_record(
            str(i),
            "q",
            gold,
            {k: v[i] for k, v in texts.items()},
            "hash",
            tokens={"baseline": b, "steered": s},
            cap=10,
        )
        for i, (gold, (b, s)) in enumerate(zip(golds, lengths, strict=True))
    ]
    assert records[1]["baseline_at_cap"] and not records[1]["steered_at_cap"]
    out = verdict(records)
    a = out["answers"]
    assert a["baseline"] == {"tokens_per_answer": 8.0, "at_token_cap": 0.75}
    assert a["steered"] == {"tokens_per_answer": 2.25, "at_token_cap": 0.0}
    assert a["at_token_cap_mcnemar_p"] == pytest.approx(2 / 8)  # 3 discordant, all one way
    table = format_verdict(out)
    assert "tokens per answer: baseline 8.0, steered 2.2" in table and "MDE" in table
    assert "at the token cap: baseline 75.0%, steered 0.0%" in table
    # records without token counts (older callers) give no `answers` block
    assert "answers" not in verdict(
        [{k: v for k, v in r.items() if "tok" not in k and "cap" not in k} for r in records]
    )

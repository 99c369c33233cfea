"""A search round (one val shard) never holds fewer questions than a generation batch."""

from __future__ import annotations

import pytest

from steerlight.search.study import fitting_rounds


@pytest.mark.parametrize(
    ("data", "rounds", "want"),
    [
        ({"val_size": 8, "batch_size": 8}, 4, 1),  # the 8 questions: one round of 8
        ({"val_size": 500, "limit_val": 8, "batch_size": 2}, 4, 4),
        ({"val_size": 500, "limit_val": 9, "batch_size": 4}, 4, 2),
        ({"val_size": 40, "batch_size": 8}, 4, 4),
        ({"val_size": 3, "batch_size": 8}, 4, 1),  # fewer questions than a batch: one round
        ({}, 4, 4),  # the data module's defaults: 500 questions, batch 8
        ({"limit_val": 16}, 4, 2),
    ],
)
def test_rounds_fit_the_batch(data, rounds, want, caplog):
    with caplog.at_level("INFO", logger="steerlight.search"):
        assert fitting_rounds({"data": data}, rounds, "s") == want
    assert ("instead of --rounds" in caplog.text) == (want < rounds)


def test_speed_only_generation_settings_do_not_split_a_study():
    """A study scored before a fast path existed resumes with it on (same tokens, per the
    fast paths' tests); a setting that changes tokens still makes a resume incomparable."""
    from steerlight.search.study import SearchOptions, comparable_settings

    def settings(**generation):
        config = {"model": {"generation": {"max_new_tokens": 8, **generation}}}
        return comparable_settings(config, SearchOptions())

    assert settings(prefix_reuse=False) == settings(prefix_reuse=True) == settings()
    assert settings(max_new_tokens=9) != settings()

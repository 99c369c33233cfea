"""Answer extraction, normalisation and scoring against lm-eval's GSM8K filter semantics."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from steerlight.answers import INVALID, extract, gold_answer, is_correct, normalize, score

# (completion, form, expected strict, expected flexible). Each expectation was worked out by hand
# from the lm-eval regexes: strict hash `#### (\-?[0-9\.\,]+)` and strict sentence
# `The answer is (\-?[0-9\.\,]+).` take the first match; flexible `(-?[$0-9.,]{2,})|(-?[0-9]+)`
# takes the last match; then `,`/`$` and one trailing `.` are dropped.
CASES = [
    # --- "#### N" form
    ("#### 72", "hash", "72", "72"),
    ("She has 5 + 3 = 8 apples.\n#### 8", "hash", "8", "8"),
    ("#### 1,234", "hash", "1234", "1234"),
    ("#### 1,000,000", "hash", "1000000", "1000000"),
    ("#### -3", "hash", "-3", "-3"),
    ("#### -1,234.5", "hash", "-1234.5", "-1234.5"),
    ("#### 18.00", "hash", "18.00", "18.00"),
    ("#### 3.0", "hash", "3.0", "3.0"),
    ("#### .5", "hash", ".5", ".5"),
    ("#### 18.", "hash", "18", "18"),
    ("#### 18..", "hash", "18.", "18."),  # only ONE trailing period is removed
    ("#### 18 dollars", "hash", "18", "18"),
    ("#### 7\n#### 9", "hash", "7", "9"),  # strict: first match; flexible: last
    ("#### 12\nCheck: 3 * 4 = 12, plus 1 more is 13", "hash", "12", "13"),
    ("#### $5", "hash", INVALID, "5"),  # `$` is not in the strict character class
    ("####5", "hash", INVALID, "5"),  # strict needs the space after ####
    ("#### .", "hash", INVALID, INVALID),  # "." normalises to nothing
    # --- no marker: strict fails, flexible takes the last number-looking span
    ("It costs $1,234.", "hash", INVALID, "1234"),
    ("I bought 3 apples and 5 oranges", "hash", INVALID, "5"),
    ("Answer: 7", "hash", INVALID, "7"),
    ("1, 2, 3", "hash", INVALID, "3"),
    ("Pi is about 3.14159", "hash", INVALID, "3.14159"),
    ("Each costs $5.50, so 3 cost $16.50.", "hash", INVALID, "16.50"),
    ("x = -12 and y = 4", "hash", INVALID, "4"),
    ("x = 4 and y = -12", "hash", INVALID, "-12"),
    ("The years 2023-2024", "hash", INVALID, "-2024"),  # the hyphen becomes a minus sign
    ("Total: 42 ...", "hash", INVALID, INVALID),  # last match is "...", not 42
    ("Version 1.2.3 is out", "hash", INVALID, INVALID),  # last match is not a number
    ("It is $, right", "hash", INVALID, INVALID),  # "$," normalises to nothing
    ("no number at all", "hash", INVALID, INVALID),
    ("", "hash", INVALID, INVALID),
    ("The answer is 18.", "hash", INVALID, "18"),  # the form only changes strict
    # --- "The answer is N." form
    ("The answer is 18.", "sentence", "18", "18"),
    ("The answer is 1,234.\n\nQ:", "sentence", "1234", "1234"),
    ("The answer is -7.", "sentence", "-7", "-7"),
    ("The answer is 0.5.", "sentence", "0.5", "0.5"),
    ("The answer is 2.5 liters.", "sentence", "2.5", "2.5"),
    ("The answer is 18. Next question has 20 ducks.", "sentence", "18", "20"),
    ("The answer is 4 cups. The answer is 6.", "sentence", "4", "6"),
    # the trailing `.` of the lm-eval regex is a wildcard that must eat one non-newline char
    ("The answer is 18", "sentence", "1", "18"),
    ("The answer is 18\n", "sentence", "1", "18"),
    ("The answer is 5", "sentence", INVALID, "5"),
    ("The answer is $18.", "sentence", INVALID, "18"),
    ("the answer is 18.", "sentence", INVALID, "18"),  # case-sensitive
    ("The answer is\n18.", "sentence", INVALID, "18"),
    ("#### 42", "sentence", INVALID, "42"),
    # --- both forms in one text
    ("#### 18\nThe answer is 20.", "hash", "18", "20"),
    ("#### 18\nThe answer is 20.", "sentence", "20", "20"),
]


@pytest.mark.parametrize(("text", "form", "strict", "flexible"), CASES)
def test_extract_table(text: str, form: str, strict: str, flexible: str) -> None:
    assert extract(text, "strict", form) == strict
    assert extract(text, "flexible", form) == flexible


def test_extract_defaults_are_strict_hash() -> None:
    assert extract("The answer is 3.\n#### 4") == "4"
    assert extract("The answer is 3.") == INVALID


def test_extract_rejects_unknown_mode_and_form() -> None:
    with pytest.raises(ValueError, match="mode"):
        extract("#### 1", "loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="form"):
        extract("#### 1", "strict", "boxed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,234.", "1234"),
        ("  42  ", "42"),
        ("18..", "18."),
        ("-3.0", "-3.0"),
        ("$", ""),
        (".", ""),
        ("5.\n", "5"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("18", "18", True),
        ("18.00", "18", True),  # numeric compare: lm-eval's string compare says False here
        ("-3", "-3.0", True),
        ("1,234", "1234", True),
        ("$5.", "5", True),
        (".5", "0.5", True),
        ("17", "18", False),
        ("-18", "18", False),
        (INVALID, "18", False),
        (INVALID, INVALID, False),
        ("", "", False),
        ("NaN", "NaN", False),
        ("Infinity", "Infinity", False),
        ("1e1", "10", False),
        ("1.2.3", "1.2.3", False),
    ],
)
def test_is_correct(pred: str, gold: str, expected: bool) -> None:
    assert is_correct(pred, gold) is expected


def test_score_combines_extract_and_is_correct() -> None:
    assert score("So 9 * 2 = 18.\n#### 18.00", "18")
    assert not score("So 9 * 2 = 18.\n#### 19", "18")
    assert not score("So 9 * 2 = 18.", "18")  # strict needs ####
    assert score("So 9 * 2 = 18.", "18", mode="flexible")
    assert score("The answer is 18.", "18", form="sentence")
    assert not score("The answer is 18", "18", form="sentence")  # lm-eval quirk: extracts "1"
    assert score("The answer is 18", "18", mode="flexible", form="sentence")


def test_gold_answer_normalises_last_hash_line() -> None:
    assert gold_answer("Some work 3+4=<<3+4=7>>7\n#### 7") == "7"
    assert gold_answer("a\n#### 1,234") == "1234"
    assert gold_answer("#### 5\nmore\n#### -12") == "-12"


@pytest.mark.parametrize("solution", ["She has 5 apples.", "", "5 + 3 = 8\n8"])
def test_gold_answer_without_hash_raises(solution: str) -> None:
    with pytest.raises(ValueError, match="####"):
        gold_answer(solution)


@pytest.mark.parametrize("solution", ["5 + 3 = 8\n#### ", "#### eight", "#### 1.2.3"])
def test_gold_answer_without_number_raises(solution: str) -> None:
    with pytest.raises(ValueError, match="no number"):
        gold_answer(solution)


def test_every_gsm8k_gold_answer_scores(gsm8k_dir: Path) -> None:
    rows = []
    for name in ("train.jsonl", "test.jsonl"):
        with open(gsm8k_dir / name, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    assert len(rows) == 8792

    bad = []
    for i, row in enumerate(rows):
        assert set(row) >= {"question", "answer"}
        solution = row["answer"]
        gold = gold_answer(solution)
        ok = (
            re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", gold) is not None
            and Decimal(gold) == Decimal(solution.split("####")[-1].strip().replace(",", ""))
            and extract(solution, "strict") == gold
            and extract(solution, "flexible") == gold
            and score(solution, gold)
        )
        if not ok:
            bad.append((i, gold, solution[-60:]))
    assert not bad, f"{len(bad)} gold solutions failed, first: {bad[:3]}"

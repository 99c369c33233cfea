"""GSM8K answer extraction and scoring, following lm-evaluation-harness's gsm8k filters.

Extraction (lm-eval ``RegexFilter``: ``findall`` then pick one match):

- ``strict`` + ``form="hash"``: ``#### (\\-?[0-9\\.\\,]+)`` (task ``gsm8k``), first match.
- ``strict`` + ``form="sentence"``: ``The answer is (\\-?[0-9\\.\\,]+).`` (task ``gsm8k_cot``),
  first match. As in lm-eval the final ``.`` is an unescaped wildcard that must consume one
  character other than a newline, so the number needs *something* after it: ``"The answer is
  18."`` gives ``18`` but ``"The answer is 18"`` at the end of the text gives ``1`` (the ``8``
  is eaten by the wildcard) and ``"The answer is 5"`` at the end gives no match at all.
- ``flexible`` (both forms): ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, the last match wins even when it
  is not a number (``"42 ..."`` ends in ``...``, which is invalid).

Normalisation is lm-eval's ``regexes_to_ignore`` for gsm8k: drop ``,`` and ``$`` and one
trailing ``.``; whitespace is stripped. A match that is empty or not a plain decimal number
after normalisation is reported as ``INVALID``.

Difference from lm-eval: lm-eval's ``exact_match`` compares the normalised *strings*, so
``"18.00"`` != ``"18"``. Here ``is_correct`` compares them as ``decimal.Decimal`` numbers, so
``"18.00"`` == ``"18"`` and ``"-3"`` == ``"-3.0"``; accuracies can therefore be slightly higher
than lm-eval's on the same completions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

INVALID = "[invalid]"

AnswerForm = Literal["hash", "sentence"]
Mode = Literal["strict", "flexible"]

STRICT_PATTERNS: dict[str, re.Pattern[str]] = {
    "hash": re.compile(r"#### (\-?[0-9\.\,]+)"),
    "sentence": re.compile(r"The answer is (\-?[0-9\.\,]+)."),
}
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
ANSWER_LINE = re.compile(r"(?:^|\n)####[ \t]{0,3}\$?-?[0-9][0-9.,]{0,19}[ \t]{0,3}\n")
"""A complete answer line: ``#### <number>`` alone on its line (a number of at most 20
characters, a few spaces around it), ended by its newline. A stop rule for presets whose answers
end with that line: the line is kept, what follows is cut."""
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def normalize(s: str) -> str:
    """Drop ``,`` and ``$``, strip whitespace and remove one trailing ``.`` (lm-eval style)."""
    s = s.replace(",", "").replace("$", "").strip()
    return s[:-1].strip() if s.endswith(".") else s


def _to_decimal(s: str) -> Decimal | None:
    """The normalised ``s`` as a Decimal, or None when it is not a plain decimal number."""
    s = normalize(s)
    return Decimal(s) if _NUMBER.fullmatch(s) else None


def extract(text: str, mode: Mode = "strict", form: AnswerForm = "hash") -> str:
    """The normalised answer in `text` under `mode`/`form`, or ``INVALID`` when there is none."""
    if mode == "strict":
        if form not in STRICT_PATTERNS:
            raise ValueError(f"unknown answer form {form!r}; expected 'hash' or 'sentence'")
        matches = STRICT_PATTERNS[form].findall(text)
        raw = matches[0] if matches else ""
    elif mode == "flexible":
        matches = FLEXIBLE_PATTERN.findall(text)
        raw = next((g for g in matches[-1] if g), "") if matches else ""
    else:
        raise ValueError(f"unknown extraction mode {mode!r}; expected 'strict' or 'flexible'")
    answer = normalize(raw)
    return answer if _NUMBER.fullmatch(answer) else INVALID


def gold_answer(solution: str) -> str:
    """The normalised number after the last ``####`` of a GSM8K gold solution."""
    _, sep, tail = solution.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K solution has no '####' answer line: {solution[-80:]!r}")
    answer = normalize(tail)
    if not _NUMBER.fullmatch(answer):
        raise ValueError(f"no number after the last '####' of GSM8K solution: {tail.strip()!r}")
    return answer


def is_correct(pred: str, gold: str) -> bool:
    """True when `pred` and `gold` normalise to equal numbers; ``INVALID`` is never correct."""
    p, g = _to_decimal(pred), _to_decimal(gold)
    return p is not None and g is not None and p == g


def score(completion: str, gold: str, mode: Mode = "strict", form: AnswerForm = "hash") -> bool:
    """Whether the answer extracted from `completion` equals `gold`."""
    return is_correct(extract(completion, mode, form), gold)

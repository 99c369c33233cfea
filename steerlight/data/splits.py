"""Train / val / test splits, and the guard that keeps val and test questions out of train."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from steerlight.errors import SteerlightError


def normalize_question(text: str) -> str:
    """Whitespace- and case-insensitive form of a question, for duplicate detection."""
    return " ".join(text.lower().split())


def holdout_indices(n: int, size: int, seed: int) -> list[int]:
    """A seeded, sorted sample of `size` row indices out of `n` (the val hold-out of train)."""
    if not 0 < size < n:
        raise SteerlightError(
            f"val_size={size} is invalid for a train split of {n} rows: use 1..{n - 1}"
        )
    return sorted(random.Random(seed).sample(range(n), size))


def check_no_leakage(
    held_out: Mapping[str, Iterable[str]], train_side: Mapping[str, Iterable[str]]
) -> None:
    """Raise if any held-out (val/test) question appears, normalised, in any train-side collection.

    Both arguments map a collection name (e.g. "val", "exemplars") to its question texts.
    """
    seen: dict[str, str] = {}
    for name, questions in train_side.items():
        for q in questions:
            seen.setdefault(normalize_question(q), name)
    for name, questions in held_out.items():
        for q in questions:
            where = seen.get(normalize_question(q))
            if where is not None:
                raise SteerlightError(
                    f"leakage: a {name} question also appears in the {where} data: {q[:80]!r}. "
                    "Remove the duplicate from the source data."
                )

"""CAA (Rimsky et al. 2023): the mean activation difference between good and bad solutions."""

from __future__ import annotations

import random
import re
from decimal import Decimal
from typing import Literal

from torch import Tensor

from steerlight.answers import gold_answer

Normalization = Literal["none", "unit", "mean_norm"]

# A number as GSM8K writes it: 1,200 or 3.5 or 42, not part of a longer word or number.
_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.,])\d+(?:\.\d+)?")


def corrupt_solution(answer: str, rng: random.Random) -> str:
    """The gold solution with every number shifted consistently, so its final answer is wrong.

    The same number is replaced by the same new number everywhere (notes, text and the
    `####` line), and no replacement equals the gold final answer.
    """
    gold = Decimal(gold_answer(answer))
    mapping: dict[Decimal, Decimal] = {}
    for match in _NUMBER.finditer(answer):
        value = Decimal(match.group().replace(",", ""))
        if value in mapping:
            continue
        while True:
            new = value + rng.choice([d for d in range(-9, 10) if d])
            if new >= 0 and new != gold and new not in mapping.values():
                break
        mapping[value] = new

    def shift(match: re.Match) -> str:
        return str(mapping[Decimal(match.group().replace(",", ""))])

    return _NUMBER.sub(shift, answer)


def mean_difference(acts: Tensor, labels: Tensor) -> Tensor:
    """`mean(h+) - mean(h-)` per layer, for activations (N, L, H) and boolean labels (N,)."""
    labels = labels.bool()
    if labels.all() or not labels.any():
        raise ValueError("CAA needs both positive and negative examples")
    return acts[labels].mean(0) - acts[~labels].mean(0)


def scale_vectors(vectors: Tensor, how: Normalization, act_norm: Tensor | None = None) -> Tensor:
    """`none`: as fitted; `unit`: unit norm; `mean_norm`: unit norm times the mean activation norm.

    `vectors` is (..., H) and `act_norm` (...) the mean activation norm at the same layers; with
    `mean_norm`, alpha reads as a fraction of a typical residual-stream norm at that layer.
    """
    if how == "none":
        return vectors
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if how == "unit":
        return unit
    if act_norm is None:
        raise ValueError("mean_norm scaling needs the mean activation norm")
    return unit * act_norm[..., None]

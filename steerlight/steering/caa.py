"""CAA (Rimsky et al. 2023): the mean activation difference between good and bad solutions."""

from __future__ import annotations

import random
import re
from decimal import Decimal

from torch import Tensor

from steerlight.answers import gold_answer
from steerlight.steering.method import Call, SteeringMethod, register
from steerlight.steering.scaling import Normalization, scale_vectors  # noqa: F401 (re-exported)

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


@register
class CAA(SteeringMethod):
    """``alpha * v`` added after the layer, v the mean difference of good and bad activations."""

    name = "caa"
    help = "adds alpha * (mean good - mean bad activation) after the layer"


@register
class Unsteered(SteeringMethod):
    """The unsteered model (every strength ignored)."""

    name = "none"
    kind = "none"
    strength = None
    exports = False
    help = "the unsteered model"

    def generate(self, call: Call):
        raise AssertionError("method none never steers")

    def refusal(self) -> str:
        return "method none does not steer"

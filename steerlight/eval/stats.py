"""Paired statistics of two models on the same questions: bootstrap CI and McNemar's test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def paired_bootstrap_ci(
    baseline: Sequence[bool], steered: Sequence[bool], n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy difference (steered - baseline) and its 95% percentile bootstrap interval.

    Questions are resampled with replacement, keeping each question's pair of outcomes together.
    """
    base = torch.tensor(baseline, dtype=torch.float64)
    steer = torch.tensor(steered, dtype=torch.float64)
    if base.shape != steer.shape or base.numel() == 0:
        raise ValueError("paired outcomes need two equally long, non-empty sequences")
    diff = steer - base
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diff), (n_boot, len(diff)), generator=gen)
    boots = diff[idx].mean(1)
    low, high = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return diff.mean().item(), low, high


def mcnemar_exact(baseline: Sequence[bool], steered: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test: (only-baseline-right count, only-steered-right count, two-sided p)."""
    b = sum(1 for x, y in zip(baseline, steered, strict=True) if x and not y)
    c = sum(1 for x, y in zip(baseline, steered, strict=True) if y and not x)
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return b, c, min(1.0, 2 * tail)


def min_detectable_difference(
    baseline: Sequence[bool], steered: Sequence[bool], z_alpha: float = 1.96, z_power: float = 0.84
) -> float:
    """The smallest accuracy difference these n paired questions could detect (two-sided 5%,
    80% power by default): ``(z_alpha + z_power) * sqrt(d / n)`` with ``d`` the observed
    fraction of discordant questions (McNemar's normal approximation), and never below ``6 / n``:
    McNemar's exact test needs at least 6 discordant questions, all one way, for p < 0.05."""
    n = len(baseline)
    if n == 0 or n != len(steered):
        raise ValueError("paired outcomes need two equally long, non-empty sequences")
    discordant = sum(1 for x, y in zip(baseline, steered, strict=True) if x != y) / n
    return max((z_alpha + z_power) * math.sqrt(discordant / n), 6 / n)

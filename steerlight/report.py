"""The verdict: paired statistics of steered vs. unsteered on the same test questions, and the
reproducibility bundle written beside them."""

from __future__ import annotations

import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def verdict(records: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Both accuracies (strict and flexible), paired difference, CI and McNemar p per mode."""
    out: dict[str, Any] = {"questions": len(records)}
    for mode in ("strict", "flexible"):
        base = [bool(r[f"baseline_correct_{mode}"]) for r in records]
        steer = [bool(r[f"steered_correct_{mode}"]) for r in records]
        diff, low, high = paired_bootstrap_ci(base, steer, seed=seed)
        only_base, only_steer, p = mcnemar_exact(base, steer)
        out[mode] = {
            "baseline_accuracy": sum(base) / len(base),
            "steered_accuracy": sum(steer) / len(steer),
            "difference": diff,
            "difference_ci95": [low, high],
            "mcnemar_p": p,
            "baseline_correct": sum(base),
            "steered_correct": sum(steer),
            "only_baseline_correct": only_base,
            "only_steered_correct": only_steer,
        }
    return out


def environment() -> dict[str, Any]:
    """Library versions, the git commit and whether the work tree had uncommitted changes."""
    import datasets
    import lightning
    import optuna
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "optuna": optuna.__version__,
        "datasets": datasets.__version__,
        "cuda": torch.version.cuda,
        **_git(),
    }


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}

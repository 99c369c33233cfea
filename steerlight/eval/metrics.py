"""Torchmetrics accuracy for GSM8K answers, scored with `steerlight.answers.is_correct`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from steerlight.answers import is_correct


class ExactMatch(Metric):
    """Fraction of predicted answers numerically equal to their gold answers (DDP-safe sums)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs) -> None:
        """Create the summed ``correct`` and ``total`` counters."""
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        """Count how many `preds` (extracted answers) match `targets` (gold answers)."""
        if isinstance(preds, str) or isinstance(targets, str):
            raise TypeError("preds and targets must be sequences of strings, not a single string")
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets")
        self.correct += sum(is_correct(p, t) for p, t in zip(preds, targets, strict=True))
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        """Accuracy ``correct / total`` as a float tensor; 0.0 before any update."""
        if self.total == 0:
            return torch.tensor(0.0, device=self.correct.device)
        return self.correct.float() / self.total


class Accuracy(torch.nn.Module):
    """Strict and flexible `ExactMatch` of one stage (val, test, the test's baseline)."""

    def __init__(self) -> None:
        super().__init__()
        self.strict, self.flexible = ExactMatch(), ExactMatch()

    def update(self, texts: Sequence[str], golds: Sequence[str], form: str) -> None:
        """Score completions: extract each mode's answer, compare with the gold answer."""
        from steerlight.answers import extract

        self.strict.update([extract(t, "strict", form) for t in texts], golds)
        self.flexible.update([extract(t, "flexible", form) for t in texts], golds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"strict": self.strict.compute(), "flexible": self.flexible.compute()}

    def reset(self) -> None:
        self.strict.reset()
        self.flexible.reset()

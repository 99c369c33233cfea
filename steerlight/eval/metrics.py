"""Torchmetrics accuracy for GSM8K answers, scored with `steerlight.answers.is_correct`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric

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
    """Strict and flexible `ExactMatch` of one stage (val, test, the test's baseline), and the
    generated tokens per answer."""

    def __init__(self, cap: int | None = None) -> None:
        """`cap`: the generation's max new tokens (answers that reach it are counted)."""
        super().__init__()
        self.cap = cap
        self.strict, self.flexible = ExactMatch(), ExactMatch()
        self.answers, self.tokens, self.capped = SumMetric(), SumMetric(), SumMetric()

    def update(
        self,
        texts: Sequence[str],
        golds: Sequence[str],
        form: str,
        lengths: torch.Tensor | None = None,
    ) -> None:
        """Score completions: extract each mode's answer, compare with the gold answer; count
        each answer's generated tokens (`lengths`) and those that ran to the token cap."""
        from steerlight.answers import extract

        self.strict.update([extract(t, "strict", form) for t in texts], golds)
        self.flexible.update([extract(t, "flexible", form) for t in texts], golds)
        if lengths is not None:
            self.answers.update(len(lengths))
            self.tokens.update(lengths.sum().float())
            self.capped.update((lengths >= self.cap).sum().float() if self.cap else 0.0)

    def lengths(self) -> dict[str, torch.Tensor]:
        """``tokens_per_answer`` and the fraction of answers ``at_token_cap`` (none: {})."""
        if not self.answers.update_count:
            return {}
        answers = self.answers.compute()
        return {
            "tokens_per_answer": self.tokens.compute() / answers,
            "at_token_cap": self.capped.compute() / answers,
        }

    def compute(self) -> dict[str, torch.Tensor]:
        return {"strict": self.strict.compute(), "flexible": self.flexible.compute()}

    def scalars(self) -> dict[str, torch.Tensor]:
        """What a stage logs: ``acc_strict``, ``acc_flexible`` and the `lengths`."""
        return {f"acc_{mode}": value for mode, value in self.compute().items()} | self.lengths()

    def reset(self) -> None:
        for metric in (self.strict, self.flexible, self.answers, self.tokens, self.capped):
            metric.reset()

"""The search's memo of unsteered generations: made once per study, reused by every trial.

An unsteered generation depends on the model, the questions, the preset and the decoding
settings, never on the trial's steering; so a search attaches one memo to each trial's
`SteeredLM`, and the baseline each trial also scores on val costs nothing after the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UnsteeredMemo:
    """Unsteered generations by (weights, question ids, preset, decoding settings)."""

    generations: dict[tuple, Any] = field(default_factory=dict)

    def attach(self, lm) -> None:
        """`lm` (a `SteeredLM`) generates its unsteered batches through this memo, and scores
        the unsteered baseline on val too (free with the memo)."""
        generate = lm.generate_batch

        def generate_batch(batch: dict[str, Any], steered: bool = True):
            if steered and lm.steers:
                return generate(batch, steered)
            key = (lm.fingerprint, tuple(batch["ids"]), lm.hparams.preset, str(lm.settings))
            if key not in self.generations:  # (a hit generates nothing: no tokens counted)
                self.generations[key] = generate(batch, steered)
            return self.generations[key]

        lm.generate_batch = generate_batch
        lm.val_baseline = True

"""Generate a batch steered by one method: the step from a fitted vector to completions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from steerlight.model.generation import (
    Generation,
    GenerationSettings,
    in_batches,
    pad_token_id,
)
from steerlight.model.refill import refill_generate
from steerlight.steering.dac import DACSettings, dac_generate
from steerlight.steering.hooks import Positions, steer

Method = Literal["none", "caa", "dac"]


def steers(method: Method, alpha: float, dac: DACSettings) -> bool:
    """Whether `method` at these strengths changes generation at all (strength 0 does not)."""
    strength = dac.alpha_max if method == "dac" else alpha
    return method != "none" and strength != 0


@dataclass(frozen=True)
class SteeringConfig:
    """What is steered, where and how strongly (a fitted vector is passed separately)."""

    method: Method
    layer: int
    alpha: float
    positions: Positions
    normalization: str
    dac: DACSettings

    @property
    def steers(self) -> bool:
        """Whether generation differs from the unsteered model at all."""
        return steers(self.method, self.alpha, self.dac)

    def summary(self) -> dict[str, Any]:
        """What steers, as the verdict records it (only the active method's strength)."""
        if not self.steers:
            return {"method": self.method, "steers": False}
        out = {"method": self.method, "steers": True, "layer": self.layer}
        out["positions"] = self.positions
        out["normalization"] = self.normalization
        if self.method == "dac":
            return {**out, "dac": dataclasses.asdict(self.dac)}
        return {**out, "alpha": self.alpha}


def steered_generate(
    model: nn.Module,
    tokenizer,
    input_ids: Tensor,
    attention_mask: Tensor,
    config: SteeringConfig,
    vector: Tensor | None,
    settings: GenerationSettings,
    stop_strings: Sequence[str],
    step_vectors: Tensor | None = None,
    slots: int | None = None,
    on_finish: Callable[[int], None] | None = None,
) -> Generation:
    """Completions for a left-padded batch, steered as `config` says (CAA hooks or DAC).

    At most `slots` rows are decoded at once (default: all). Plain and CAA generation decode
    with row refill (`refill_generate`: a finished row's slot takes the next prompt; the same
    tokens as padded batching); DAC runs its own loop on `slots` rows at a time, from which
    finished rows leave. `on_finish(rows)` is told as rows finish (progress reports).
    """
    args = (model, tokenizer, input_ids, attention_mask)
    if not config.steers:
        return refill_generate(*args, settings, stop_strings, slots, on_finish=on_finish)
    if config.method == "dac":

        def dac(ids: Tensor, mask: Tensor) -> Generation:
            return dac_generate(
                model,
                tokenizer,
                ids,
                mask,
                config.layer,
                vector if step_vectors is None else None,
                settings,
                stop_strings,
                top_p=config.dac.top_p,
                alpha_max=config.dac.alpha_max,
                batchmean=config.dac.batchmean,
                positions=config.positions,
                step_vectors=step_vectors,
            )

        pad_id = pad_token_id(model, tokenizer)
        return in_batches(dac, input_ids, attention_mask, slots, pad_id, on_finish)
    width = input_ids.shape[1]
    with steer(
        model, config.layer, vector, config.alpha, config.positions, prompt_len=width
    ) as steering:
        return refill_generate(*args, settings, stop_strings, slots, steering, on_finish)

"""Generate a batch steered by one method: the step from a fitted vector to completions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from steerlight.errors import SteerlightError
from steerlight.model.generation import Generation, GenerationSettings
from steerlight.model.refill import refill_generate
from steerlight.steering import method as methods
from steerlight.steering.dac import DACSettings
from steerlight.steering.hooks import Positions
from steerlight.steering.method import Call

Method = str
"""A registered steering method's name (`steerlight.steering.method.names()`)."""


def steers(method: Method, alpha: float, dac: DACSettings) -> bool:
    """Whether `method` at these strengths changes generation at all (strength 0 does not)."""
    hparams = {"alpha": alpha, "dac": dataclasses.asdict(dac)}
    return methods.get(method).strength_of(hparams) != 0


@dataclass(frozen=True)
class SteeringConfig:
    """What is steered, where and how strongly (a fitted vector is passed separately)."""

    method: Method
    layer: int | tuple[int, ...]
    alpha: float
    positions: Positions
    normalization: str
    dac: DACSettings
    options: Any = None
    """The method's own settings (`model.options`), or None."""

    @property
    def layers(self) -> tuple[int, ...]:
        """The steered layers (one for most runs)."""
        return tuple(self.layer) if isinstance(self.layer, (tuple, list)) else (self.layer,)

    @property
    def steers(self) -> bool:
        """Whether generation differs from the unsteered model at all."""
        return steers(self.method, self.alpha, self.dac)

    def record(self) -> dict[str, Any]:
        """What the configuration says, steering or not (the verdict's header): the resolved
        layer, alpha and the method's strength (alpha, or DAC's dac.alpha_max); layer None
        where an unsteered run never resolved `auto`."""
        layer = self.layer if isinstance(self.layer, (int, type(None))) else list(self.layer)
        strength = methods.get(self.method).strength_of(
            {"alpha": self.alpha, "dac": dataclasses.asdict(self.dac)}
        )
        return {"layer": layer, "alpha": self.alpha, "strength": strength}

    def summary(self) -> dict[str, Any]:
        """What steers, as the verdict records it (only the active method's settings)."""
        if not self.steers:
            return {"method": self.method, "steers": False}
        layer = self.layer if isinstance(self.layer, int) else list(self.layer)
        out = {"method": self.method, "steers": True, "layer": layer}
        out["positions"] = self.positions
        out["normalization"] = self.normalization
        return {**out, **methods.get(self.method).summary(self)}


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
    state: Mapping[str, Tensor] | None = None,
) -> Generation:
    """Completions for a left-padded batch, steered as `config` says (its method's `generate`).

    `vector` (scaled) and `step_vectors` default to the method's own from the fitted `state`.

    At most `slots` rows are decoded at once (default: all). Plain and CAA generation decode
    with row refill (`refill_generate`: a finished row's slot takes the next prompt; the same
    tokens as padded batching); DAC runs its own loop on `slots` rows at a time, from which
    finished rows leave. `on_finish(rows)` is told as rows finish (progress reports).
    """
    args = (model, tokenizer, input_ids, attention_mask)
    if not config.steers:
        return refill_generate(*args, settings, stop_strings, slots, on_finish=on_finish)
    method = methods.get(config.method)
    if len(config.layers) > 1 and not method.multi_layer:
        raise SteerlightError(
            f"model.layer={list(config.layers)}: method {config.method} steers one layer; "
            "several layers are for the additive methods"
        )
    if vector is None and step_vectors is None:
        vector, step_vectors = method.vectors(state or {}, config)
    call = Call(*args, config, vector, settings, stop_strings, state or {}, slots, on_finish)
    call.step_vectors = step_vectors
    return method.generate(call)

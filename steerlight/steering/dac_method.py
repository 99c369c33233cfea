"""DAC as a registered method: the per-token strength of `steerlight.steering.dac`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from steerlight.errors import SteerlightError
from steerlight.model.generation import Generation, in_batches, pad_token_id
from steerlight.steering.dac import DACSettings, dac_generate
from steerlight.steering.method import Call, SteeringMethod, register, scaled


def _dac(hparams: Mapping[str, Any]) -> DACSettings:
    dac = hparams.get("dac") or {}
    return dac if isinstance(dac, DACSettings) else DACSettings(**dict(dac))


@register
class DAC(SteeringMethod):
    """Dynamic Activation Composition: each row and token gets its own strength in
    [0, dac.alpha_max], from the KL between steered and unsteered next-token distributions."""

    name = "dac"
    kind = "dynamic"
    strength = "dac.alpha_max"
    multi_layer = False
    help = "CAA's vector at a per-token strength in [0, dac.alpha_max]"

    def fit_key(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        dac = _dac(hparams)
        return {"icl": [dac.steps, dac.icl_examples] if dac.vectors == "icl" else None}

    def vectors(self, state: Mapping[str, Tensor], config: Any) -> tuple[Tensor | None, Any]:
        if config.dac.vectors == "icl":
            return None, scaled(state, "icl_vectors", config)
        return scaled(state, "vectors", config), None

    def generate(self, call: Call) -> Generation:
        c = call.config

        def one(ids: Tensor, mask: Tensor) -> Generation:
            return dac_generate(
                call.model,
                call.tokenizer,
                ids,
                mask,
                c.layers[0],
                call.vector if call.step_vectors is None else None,
                call.settings,
                call.stop_strings,
                top_p=c.dac.top_p,
                alpha_max=c.dac.alpha_max,
                batchmean=c.dac.batchmean,
                positions=c.positions,
                step_vectors=call.step_vectors,
            )

        pad_id = pad_token_id(call.model, call.tokenizer)
        ids, mask = call.input_ids, call.attention_mask
        return in_batches(one, ids, mask, call.slots, pad_id, call.on_finish)

    def summary(self, config: Any) -> dict[str, Any]:
        return {"dac": dataclasses.asdict(config.dac)}

    def export_vector(
        self, state: Mapping[str, Tensor], layer: int, hparams: Mapping[str, Any]
    ) -> tuple[Tensor, list[str]]:
        if _dac(hparams).vectors != "icl":
            return super().export_vector(state, layer, hparams)
        if "icl_vectors" not in state:
            raise SteerlightError("dac.vectors 'icl' but the checkpoint holds no icl_vectors")
        table = state["icl_vectors"][:, layer, :]  # (T + 1, H): one per step, then the rest
        note = (
            f"dac.vectors 'icl' steers each of the first {table.shape[0] - 1} generated tokens "
            "with its own vector; the file holds the one steerlight uses for every later token "
            "(their steady state), so the per-step vectors are lost"
        )
        return table[-1].float(), [note]

    def strength_of(self, hparams: Mapping[str, Any]) -> float:
        """`dac.alpha_max`, with `DACSettings`' defaults for what the arguments leave out."""
        dac = hparams.get("dac") or {}
        return float((DACSettings(**dac) if isinstance(dac, Mapping) else dac).alpha_max)

    def export_notes(self, target: str, strength: float) -> list[str]:
        return [
            f"method 'dac' sets the strength per token in [0, alpha_max]; {target} adds a fixed "
            f"vector, so the file holds the alpha_max = {strength:g} vector at every token "
            "(DAC's per-token strength is lost: every token is steered at least as strongly)"
        ]

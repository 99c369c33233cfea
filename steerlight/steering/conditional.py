"""Conditional (probe-gated) CAA, like CAST (Lee et al. 2024): steer a row only when the probe
says so.

Before decoding, each prompt is read once, unsteered: its activations at the steered layer,
averaged over the prompt's tokens, go through that layer's probe (`steering.probes`, fitted on
train to tell good solutions from bad: ``p = sigmoid(w . (h - mean) / std + b)``). Rows with
``p < options.threshold`` (``options.steer_when: below``, the default: the probe expects a bad
solution) or ``p > threshold`` (``above``) are decoded with ``alpha * v`` added as CAA does; the
others unsteered. The probe reads solution activations on train and prompt activations here: the
threshold is searched, not assumed. Not a fixed vector, so it does not export.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from steerlight.errors import SteerlightError
from steerlight.model.generation import Generation, pad_token_id, split_rows
from steerlight.model.refill import refill_generate
from steerlight.steering.activations import read_layers, skip_logits_kwargs
from steerlight.steering.method import Call, SteeringMethod, hooked_generate, register


@dataclass(frozen=True)
class ConditionalSettings:
    threshold: float = 0.5
    """The probe probability (of a good solution) that gates steering."""
    steer_when: Literal["below", "above"] = "below"
    """Steer rows whose probability is below (default) or above the threshold."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0 <= self.threshold <= 1):
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.steer_when not in ("below", "above"):
            raise ValueError(f"steer_when must be below or above, got {self.steer_when!r}")


@torch.no_grad()
def prompt_probability(
    model: nn.Module, ids: Tensor, mask: Tensor, layer: int, state: Mapping[str, Tensor]
) -> Tensor:
    """The layer's probe probability (B,) on each prompt's mean activation, unsteered."""
    weights = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)

    def mean(hidden: Tensor) -> Tensor:
        return torch.einsum("bth,bt->bh", hidden, weights.to(hidden.device))

    with read_layers(model, [layer], mean) as out:
        model(input_ids=ids, attention_mask=mask, use_cache=False, **skip_logits_kwargs(model))
    h = out[layer].cpu().double()
    if "probe_mean" not in state:
        raise SteerlightError(
            "method conditional needs the probes' mean and std, which this fitted state lacks "
            "(fitted before they were kept): run `fit` again"
        )
    probe = {k: state[f"probe_{k}"][layer].cpu().double() for k in ("mean", "std", "weight")}
    bias = state["probe_bias"][layer].cpu().double()
    return torch.sigmoid((h - probe["mean"]) / probe["std"] @ probe["weight"] + bias)


def gate(probability: Tensor, settings: ConditionalSettings) -> Tensor:
    """Which rows are steered (B,) bool."""
    if settings.steer_when == "below":
        return probability < settings.threshold
    return probability > settings.threshold


def _rows(call: Call, index: Tensor) -> Call:
    """The call on a subset of rows, without the columns all of them pad."""
    ids, mask = call.input_ids[index], call.attention_mask[index]
    start = int((mask.shape[1] - mask.sum(1)).min())
    return Call(**{**vars(call), "input_ids": ids[:, start:], "attention_mask": mask[:, start:]})


@register
class Conditional(SteeringMethod):
    """CAA on the rows whose prompt the probe flags (`options.threshold`, `options.steer_when`)."""

    name = "conditional"
    kind = "gated"
    exports = False
    multi_layer = False
    settings = ConditionalSettings
    help = "CAA on the rows whose prompt probe passes options.threshold (options.steer_when)"

    def fit_key(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        return {"icl": None, "direction": {"method": self.name}}  # a state with probe_mean/std

    def generate(self, call: Call) -> Generation:
        layer = call.config.layers[0]
        size = call.slots or len(call.input_ids)  # a val step's rows, a slot-sized group at once
        p = torch.cat(
            [
                prompt_probability(call.model, ids, mask, layer, call.state)
                for ids, mask in split_rows(call.input_ids, call.attention_mask, size)
            ]
        )
        steered = gate(p, call.config.options).to(call.input_ids.device)
        parts = []
        for on in (True, False):
            index = steered.nonzero().flatten() if on else (~steered).nonzero().flatten()
            if len(index) == 0:
                continue
            rows = _rows(call, index)
            if on:
                parts.append((index, hooked_generate(rows, project=False)))
            else:
                args = (rows.model, rows.tokenizer, rows.input_ids, rows.attention_mask)
                plain = (rows.settings, rows.stop_strings, rows.slots, None, rows.on_finish)
                parts.append((index, refill_generate(*args, *plain)))
        return merge_rows(parts, len(steered), pad_token_id(call.model, call.tokenizer))


def merge_rows(parts: list[tuple[Tensor, Generation]], n: int, pad_id: int) -> Generation:
    """One `Generation` of `n` rows from parts that each hold the rows `index` names."""
    if len(parts) == 1:
        return parts[0][1]
    width = max(g.tokens.shape[1] for _, g in parts)
    device = parts[0][1].tokens.device
    tokens = torch.full((n, width), pad_id, dtype=parts[0][1].tokens.dtype, device=device)
    texts = [""] * n
    for index, g in parts:
        tokens[index.to(device), : g.tokens.shape[1]] = g.tokens
        for i, text in zip(index.tolist(), g.texts, strict=True):
            texts[i] = text
    return Generation(tokens=tokens, texts=texts)

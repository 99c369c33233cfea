"""Generic decoder-layer discovery for any Hugging Face causal LM (no per-architecture table)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from steerlight.errors import SteerlightError

_LAYER_COUNT_KEYS = ("decoder_layers", "num_hidden_layers", "n_layer", "n_layers", "num_layers")
"""Config keys of the layer count, first match wins: an encoder-decoder config run as a causal LM
(``BartForCausalLM``) counts its decoder's layers under ``decoder_layers``."""


def num_layers_from_config(model: nn.Module) -> int | None:
    """The decoder-layer count the model's (text) config declares, or None when it has none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            config = get_text_config(decoder=True)
        except TypeError:  # older signature without `decoder`
            config = get_text_config()
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_type(model: nn.Module) -> str:
    """The model's ``config.model_type`` (``llama``, ``mamba``, ...), else its class name."""
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks.

    This is the `nn.ModuleList` whose length equals the config's layer count
    (`num_hidden_layers`, `n_layer`, ... of `config.get_text_config()`); when several match
    (e.g. a vision tower with as many blocks), the one with the most parameters wins.
    Raises `ValueError` when none is found.
    """
    expected = num_layers_from_config(model)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if expected is None:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__}: its config declares no "
            f"layer count (looked for {', '.join(_LAYER_COUNT_KEYS)})"
        )
    matches = [(name, m) for name, m in lists if len(m) == expected]
    if not matches:
        found = ", ".join(f"{name or '<root>'} ({len(m)})" for name, m in lists) or "none"
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__}: no nn.ModuleList has "
            f"{expected} entries (the config's layer count); ModuleLists found: {found}"
        )
    return max(matches, key=lambda item: _num_params(item[1]))[1]


def resolve_layer(model: nn.Module, layer: int) -> int:
    """Map a (possibly negative, python-style) layer index to 0..n-1, or raise `ValueError`."""
    n = len(decoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            layer = int(layer.__index__())  # numpy / torch integer scalars
        except (AttributeError, TypeError):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}") from None
    if not -n <= layer < n:
        raise ValueError(
            f"layer {layer} is out of range for this model's {n} decoder layers: "
            f"use 0..{n - 1} or -{n}..-1"
        )
    return layer % n


def layer_hidden_states(output: Any, model_type: str, layer: int, tokens: int | None) -> Tensor:
    """The hidden states in a decoder layer's output (a tensor, or element 0 of a tuple).

    They must be one residual stream of one position per input token, (batch, `tokens`, hidden)
    (any length when `tokens` is None): anything else is a `SteerlightError` on one line naming
    the model type and the reason (``cpmant`` adds positions of its own, ``deepseek_v4`` keeps
    several residual streams, ``rwkv``'s batched cache step returns (batch, batch, hidden)).
    """
    hidden = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(hidden, Tensor):
        why = f"its decoder layer {layer} returns {type(hidden).__name__}, not hidden states"
    elif hidden.ndim == 4:
        why = f"its decoder layers keep {hidden.shape[2]} parallel residual streams"
    elif hidden.ndim == 3 and tokens is not None and hidden.shape[1] > tokens:
        why = "its decoder layers return more positions than input tokens"
    elif hidden.ndim == 3 and (tokens is None or hidden.shape[1] == tokens):
        return hidden
    else:
        why = "its decoder layers do not return one hidden state per input token"
    got = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
    per = f" for {tokens} input tokens" if tokens is not None else ""
    raise SteerlightError(
        f"cannot steer {model_type}: {why} (layer {layer} returned {got}{per}; steering needs "
        f"(batch, {tokens if tokens is not None else 'tokens'}, hidden))"
    )


def check_fits(model: nn.Module, name: str, layer: Any, max_new_tokens: int) -> None:
    """The configured layer (an index, a list of them or ``auto``) exists and `max_new_tokens`
    fits the context of the model called `name`; a one-line `SteerlightError` otherwise."""
    from steerlight.model.loading import context_length

    context = context_length(model)
    if context is not None and max_new_tokens >= context:
        raise SteerlightError(
            f"model.generation.max_new_tokens={max_new_tokens} does not fit {name!r}, whose "
            f"context holds {context} tokens with the prompt: use fewer (GSM8K solutions need "
            "about 256)"
        )
    if layer != "auto":
        try:
            for index in layer if isinstance(layer, list) else [layer]:
                resolve_layer(model, index)
        except ValueError as err:
            raise SteerlightError(str(err)) from None

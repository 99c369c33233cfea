"""Activation-steering hooks: add `alpha * v` to the residual stream after one decoder layer.

Which token positions are steered is decided from ABSOLUTE columns of the (left-padded)
sequence, so the same rule holds on the full prompt pass and on every single-token KV-cache
step:

- ``"generated"``: columns ``>= prompt_len`` (the generated tokens only),
- ``"prompt_end+generated"``: columns ``>= prompt_len - 1`` (last prompt token + generated),
- ``"all"``: every column.

Pad positions (attention mask 0) are never steered.

How the columns are found: a forward PRE-hook on the model handed to `steer` reads the 2D
``attention_mask`` (B, past + T) and the length T of the current chunk (``input_ids`` or
``inputs_embeds``); the chunk covers columns ``[mask_len - T, mask_len)``. This holds for
``model.generate`` (which appends a column of ones to the 2D mask at every step and passes it to
each forward, also for chunked prefill) and for hand-written loops that do the same. When no 2D
mask is passed (``generate`` drops an all-ones mask; compileable caches turn it into a 4D one),
there is no padding to respect and the chunk starts at the cache's length
(``cache.get_seq_length()``, 0 without a cache).

The layer's forward hook then adds ``alpha[:, None, None] * v * position_mask`` to the layer's
output hidden states (a tensor, or element 0 of a tuple). It is registered with
``prepend=True`` so Transformers' own output-capturing hooks (``output_hidden_states``) record
the steered hidden states.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from steerlight.model.layers import decoder_layers, resolve_layer

Positions = Literal["generated", "prompt_end+generated", "all"]
"""Which token positions are steered (see the module docstring)."""

POSITIONS: tuple[str, ...] = get_args(Positions)

_CACHE_NAMES = ("cache", "past_key_values")


def _as_alpha(alpha: float | Tensor) -> Tensor:
    """A 1-D strength tensor: shape (1,) for a scalar (broadcast over the batch) or (B,)."""
    if isinstance(alpha, Tensor):
        a = alpha.detach()
        if not a.is_floating_point():
            a = a.float()
    else:
        a = torch.tensor(float(alpha), dtype=torch.float32)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(
            "alpha must be a float or a 1-D tensor of per-row strengths, "
            f"got shape {tuple(a.shape)}"
        )
    return a


def _cache_length(cache: Any) -> int:
    """Tokens already held by a KV cache (0 without one)."""
    if cache is None:
        return 0
    get_seq_length = getattr(cache, "get_seq_length", None)
    if callable(get_seq_length):
        return int(get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuples
        return int(cache[0][0].shape[-2])
    return 0


class _ArgReader:
    """Reads named forward arguments from (args, kwargs), whichever way they were passed."""

    def __init__(self, forward: Any) -> None:
        try:
            params = list(inspect.signature(forward).parameters.values())
        except (TypeError, ValueError):
            params = []
        self._index = {
            p.name: i
            for i, p in enumerate(params)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def get(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        i = self._index.get(name)
        if i is not None and i < len(args):
            return args[i]
        return None


class Steering:
    """Steering state shared by the hooks of one `steer` context.

    ``alpha`` is mutable: assign a float or a (B,) tensor between forward passes (e.g. in a
    hand-written decoding loop) and the next forward uses it. In-place edits of the alpha
    tensor are seen too.
    """

    def __init__(
        self,
        layer: int,
        vector: Tensor,
        alpha: float | Tensor,
        positions: Positions = "prompt_end+generated",
        prompt_len: int | None = None,
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions != "all":
            if prompt_len is None:
                raise ValueError(
                    f"positions={positions!r} needs prompt_len (the padded prompt width)"
                )
            if prompt_len < 1:
                raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
        if not isinstance(vector, Tensor) or vector.ndim != 1:
            shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
            raise ValueError(
                f"the steering vector must be a 1-D tensor (hidden_size,), got {shape}"
            )
        self.layer = layer
        self.vector = vector.detach()
        self.positions: Positions = positions
        self.prompt_len = prompt_len
        self.alpha = alpha  # type: ignore[assignment]  (the setter normalises it)
        # Set by the model pre-hook for the forward in flight: (first column, T, valid mask or None)
        self._chunk: tuple[int, int, Tensor | None] | None = None

    # ---- strength -------------------------------------------------------------------------
    @property
    def alpha(self) -> Tensor:
        """Per-row strengths, shape (B,), or (1,) broadcast over the batch."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float | Tensor) -> None:
        self._alpha = _as_alpha(value)

    @property
    def first_column(self) -> int:
        """The first absolute column that is steered."""
        if self.positions == "all":
            return 0
        assert self.prompt_len is not None
        return self.prompt_len - (1 if self.positions == "prompt_end+generated" else 0)

    def _alpha_is_zero(self) -> bool:
        """True when every strength is 0; only asked of CPU alphas, so it never syncs a device."""
        a = self._alpha
        return a.device.type == "cpu" and bool((a == 0).all())

    # ---- hooks ----------------------------------------------------------------------------
    def _make_model_pre_hook(self, model: nn.Module):
        reader = _ArgReader(model.forward)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = reader.get("input_ids", args, kwargs)
            if x is None:
                x = reader.get("inputs_embeds", args, kwargs)
            if x is None:
                self._chunk = None
                return
            t = int(x.shape[1])
            mask = reader.get("attention_mask", args, kwargs)
            if isinstance(mask, Tensor) and mask.ndim == 2:
                end = int(mask.shape[1])
                if end < t:
                    raise ValueError(
                        f"attention_mask covers {end} columns but the input has {t} tokens"
                    )
                valid = mask[:, end - t :]
            else:
                cache = None
                for name in _CACHE_NAMES:
                    cache = reader.get(name, args, kwargs)
                    if cache is not None:
                        break
                end = _cache_length(cache) + t
                valid = None
            self._chunk = (end - t, t, valid)

        return pre_hook

    def _model_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._chunk = None

    def _layer_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, Tensor):
            h = output
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
            h = output[0]
        else:
            raise TypeError(
                f"decoder layer {self.layer} returned {type(output).__name__}; expected a tensor "
                "or a tuple whose first element is the hidden states"
            )
        chunk = self._chunk
        if chunk is None:
            raise RuntimeError(
                f"steering hook on layer {self.layer} ran outside a forward of the model passed to "
                "steer(), so the token positions are unknown; call that model (or model.generate)"
            )
        start, t, valid = chunk
        if h.ndim != 3 or h.shape[1] != t:
            raise RuntimeError(
                f"layer {self.layer} output has shape {tuple(h.shape)}, "
                f"expected (batch, {t}, hidden)"
            )
        first = self.first_column
        if start + t <= first or self._alpha_is_zero():
            return None  # nothing steered in this chunk: leave the output untouched (bit-exact)

        v = self.vector.to(h)  # no-ops once the dtype and device match
        if v.shape[0] != h.shape[-1]:
            raise ValueError(
                f"steering vector has size {v.shape[0]} but layer {self.layer}'s hidden size "
                f"is {h.shape[-1]}"
            )
        a = self._alpha.to(h)
        if a.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"alpha has {a.shape[0]} strengths for a batch of {h.shape[0]} rows")
        scale = a[:, None]  # (B | 1, 1)
        if start < first:  # the chunk straddles the first steered column (a prompt pass)
            cols = torch.arange(start, start + t, device=h.device) >= first
            scale = scale * cols.to(h.dtype)  # (B | 1, T)
        if valid is not None:
            scale = scale * valid.to(device=h.device, dtype=h.dtype)  # pads are never steered
        steered = torch.addcmul(h, scale.unsqueeze(-1), v)
        if isinstance(output, Tensor):
            return steered
        rest = list(output[1:])
        return [steered, *rest] if isinstance(output, list) else (steered, *rest)


@contextmanager
def steer(
    model: nn.Module,
    layer: int,
    vector: Tensor,
    alpha: float | Tensor,
    positions: Positions = "prompt_end+generated",
    *,
    prompt_len: int | None = None,
) -> Iterator[Steering]:
    """Add ``alpha * vector`` after decoder layer `layer` of `model` inside the ``with`` block.

    Args:
        model: the causal LM that will be called (its forward or ``generate``).
        layer: decoder-layer index, negative counts from the end.
        vector: (hidden_size,) steering vector, any dtype/device (cast inside the hook).
        alpha: a float, or a (B,) tensor of per-row strengths; mutable via the yielded object.
        positions: which positions are steered (see `Positions`).
        prompt_len: the padded prompt width (columns of the prompt); required unless
            ``positions == "all"``.

    Yields the `Steering` object; hooks are removed on exit, also when an exception is raised.
    """
    index = resolve_layer(model, layer)
    steering = Steering(index, vector, alpha, positions, prompt_len)
    block = decoder_layers(model)[index]
    handles = []
    try:
        pre_hook = steering._make_model_pre_hook(model)
        handles.append(model.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(model.register_forward_hook(steering._model_post_hook, always_call=True))
        handles.append(block.register_forward_hook(steering._layer_hook, prepend=True))
        yield steering
    finally:
        for handle in handles:
            handle.remove()
        steering._chunk = None

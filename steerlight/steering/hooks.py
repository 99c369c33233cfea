"""Activation-steering hooks: add `alpha * v` to the residual stream after one decoder layer.

Which token positions are steered is decided from ABSOLUTE columns of the (left-padded)
sequence, so the same rule holds on the full prompt pass and on every single-token cache step:

- ``"generated"``: columns ``>= prompt_len`` (the generated tokens only),
- ``"prompt_end+generated"``: columns ``>= prompt_len - 1`` (last prompt token + generated),
- ``"all"``: every column.

Pad positions (attention mask 0) are never steered.

`steer` adds one edit to the layer's forward hook (`steerlight.model.layer_hooks.LayerHooks`,
one object per layer for the model's lifetime, so that a compiled decode step traces the same
hook whatever steers). At every forward it asks the model's
`steerlight.model.columns.Columns` (which finds the columns of each forward and holds the
prompt widths) for the chunk in flight and adds ``alpha * v * position_mask`` to the layer's
output hidden states (a tensor, or element 0 of a tuple), which must be (batch, T, hidden): a
layout with more positions or several residual streams stops with an error naming the model
type. The hook is registered with ``prepend=True`` so Transformers' own output-capturing hooks
(``output_hidden_states``) record the steered hidden states. Several layers steered at once
share one `Columns` (`columns=`). `Projection` removes the component along ``v`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from steerlight.model.columns import Chunk, Columns
from steerlight.model.layer_hooks import LayerHooks
from steerlight.model.layers import (
    decoder_layers,
    layer_hidden_states,
    model_type,
    resolve_layer,
)

Positions = Literal["generated", "prompt_end+generated", "all"]
"""Which token positions are steered (see the module docstring)."""

POSITIONS: tuple[str, ...] = get_args(Positions)


def _as_alpha(alpha: float | Tensor) -> Tensor:
    """A strength tensor: (1,) for a scalar (broadcast over the batch), (B,) or (B, T)."""
    if isinstance(alpha, Tensor):
        a = alpha.detach()
        if not a.is_floating_point():
            a = a.float()
    else:
        a = torch.tensor(float(alpha), dtype=torch.float32)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim not in (1, 2):
        raise ValueError(
            "alpha must be a float, a 1-D tensor of per-row strengths or a (rows, tokens) tensor "
            f"of per-column strengths, got shape {tuple(a.shape)}"
        )
    return a


def _as_vector(vector: Tensor) -> Tensor:
    """A (hidden,) vector, or (T, hidden) vectors, one per column of the chunk in flight."""
    if not isinstance(vector, Tensor) or vector.ndim not in (1, 2):
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise ValueError(
            f"the steering vector must be (hidden_size,) or (tokens, hidden_size), got {shape}"
        )
    return vector.detach()


class Strength:
    """What a hook adds at the chunk in flight: ``alpha`` times ``vector``.

    Both may be set between forward passes and the next forward uses them. ``alpha`` is a
    float, a (B,) tensor of per-row strengths, or a (B, T) tensor giving each column of the
    next chunk its own strength; ``vector`` is (hidden,) or (T, hidden), one vector per column
    of the next chunk (how DAC recomputes a sequence whose columns were steered at different
    steps, from a `Strength` its decoding loop owns). In-place edits of the alpha tensor are
    seen too.
    """

    def __init__(self, vector: Tensor, alpha: float | Tensor) -> None:
        self.vector = vector
        self.alpha = alpha  # type: ignore[assignment]  (the setter normalises it)

    @property
    def alpha(self) -> Tensor:
        """Strengths: (1,) broadcast over the batch, (B,) per row or (B, T) per column."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float | Tensor) -> None:
        self._alpha = _as_alpha(value)

    @property
    def vector(self) -> Tensor:
        """The steering vector (hidden,), or (T, hidden) for the columns of the next chunk."""
        return self._vector

    @vector.setter
    def vector(self, value: Tensor) -> None:
        self._vector = _as_vector(value)


class Steering:
    """What one `steer` block adds after its layer: ``alpha * vector`` from `first_column` on.

    ``alpha`` and ``vector`` are its `Strength`'s (assign them between forwards; see there).
    ``columns`` is the model's `Columns` (the prompt widths, the chunk in flight), which a
    decoding loop is handed.
    """

    def __init__(
        self,
        layer: int,
        strength: Strength,
        columns: Columns,
        positions: Positions = "prompt_end+generated",
        model_type: str = "model",
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions != "all" and columns.prompt_len is None:
            raise ValueError(f"positions={positions!r} needs prompt_len (the padded prompt width)")
        self.layer = layer
        self.strength = strength
        self.columns = columns
        self.positions: Positions = positions
        self.model_type = model_type

    @property
    def alpha(self) -> Tensor:
        """Strengths: (1,) broadcast over the batch, (B,) per row or (B, T) per column."""
        return self.strength.alpha

    @alpha.setter
    def alpha(self, value: float | Tensor) -> None:
        self.strength.alpha = value  # type: ignore[assignment]

    @property
    def vector(self) -> Tensor:
        """The steering vector (hidden,), or (T, hidden) for the columns of the next chunk."""
        return self.strength.vector

    @vector.setter
    def vector(self, value: Tensor) -> None:
        self.strength.vector = value

    @property
    def per_row(self) -> bool:
        """Whether rows have strengths of their own (a decoding loop must not move them)."""
        return self.alpha.numel() > 1

    @property
    def first_column(self) -> int | Tensor:
        """The first absolute column that is steered (a (B,) tensor for per-row widths)."""
        if self.positions == "all":
            return 0
        prompt_len = self.columns.prompt_len
        assert prompt_len is not None
        return prompt_len - (1 if self.positions == "prompt_end+generated" else 0)

    def _alpha_is_zero(self) -> bool:
        """True when every strength is 0; only asked of CPU alphas, so it never syncs a device."""
        a = self.strength.alpha
        return a.device.type == "cpu" and bool((a == 0).all())

    def hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """The layer's forward hook: its output with the chunk's steered columns changed."""
        chunk = self.columns.chunk
        if chunk is None:
            raise RuntimeError(
                f"steering hook on layer {self.layer} ran outside a forward of the model passed to "
                "steer(), so the token positions are unknown; call that model (or model.generate)"
            )
        h = layer_hidden_states(output, self.model_type, self.layer, chunk.length)
        if not isinstance(chunk.start, Tensor):  # (a tensor: a compiled step, no data branch)
            first = self.first_column
            earliest = int(first.min()) if isinstance(first, Tensor) else first
            if chunk.start + chunk.length <= earliest or self._alpha_is_zero():
                return None  # nothing steered in this chunk: the output untouched (bit-exact)
        steered = self._apply(h, self._scale(h, chunk), self._vector_for(h, chunk.length))
        if isinstance(output, Tensor):
            return steered
        rest = list(output[1:])
        return [steered, *rest] if isinstance(output, list) else (steered, *rest)

    def _apply(self, h: Tensor, scale: Tensor, v: Tensor) -> Tensor:
        """The steered hidden states: ``h + scale * v``."""
        return torch.addcmul(h, scale, v)

    def _vector_for(self, h: Tensor, t: int) -> Tensor:
        """The vector(s) cast to `h`: (hidden,) or (T, hidden)."""
        v = self.strength.vector.to(h)  # no-ops once the dtype and device match
        if v.shape[-1] != h.shape[-1]:
            raise ValueError(
                f"steering vector has size {v.shape[-1]} but layer {self.layer}'s hidden size "
                f"is {h.shape[-1]}"
            )
        if v.ndim == 2 and v.shape[0] != t:
            raise ValueError(f"{v.shape[0]} per-column steering vectors for a chunk of {t} tokens")
        return v

    def _scale(self, h: Tensor, chunk: Chunk) -> Tensor:
        """(B | 1, T | 1, 1): strength x steered column x non-pad, per row and column."""
        start, t, valid = chunk
        a = self.strength.alpha.to(h)
        if a.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"alpha has {a.shape[0]} strengths for a batch of {h.shape[0]} rows")
        if a.ndim == 2 and a.shape[1] != t:
            raise ValueError(f"alpha has {a.shape[1]} column strengths for a chunk of {t} tokens")
        scale = a if a.ndim == 2 else a[:, None]  # (B | 1, T | 1)
        first = self.first_column
        if isinstance(first, Tensor):  # per row: (B, T)
            if first.shape[0] != h.shape[0]:
                raise ValueError(f"{first.shape[0]} prompt widths for a batch of {h.shape[0]} rows")
            cols = start + torch.arange(t, device=h.device) >= first.to(h.device)[:, None]
            scale = scale * cols.to(h.dtype)
        elif isinstance(start, Tensor) or start < first:  # the chunk straddles the first column
            cols = start + torch.arange(t, device=h.device) >= first
            scale = scale * cols.to(h.dtype)
        if valid is not None:
            scale = scale * valid.to(device=h.device, dtype=h.dtype)  # pads are never steered
        return scale.unsqueeze(-1)


class Projection(Steering):
    """Directional ablation: ``h - alpha * r r^T h`` with ``r`` the unit steering vector."""

    def _apply(self, h: Tensor, scale: Tensor, v: Tensor) -> Tensor:
        r = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return h - scale * (h * r).sum(-1, keepdim=True) * r


def _fixed_strength(vector: Tensor, alpha: float | Tensor) -> Strength:
    if not isinstance(vector, Tensor) or vector.ndim != 1:
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise ValueError(f"the steering vector must be a 1-D tensor (hidden_size,), got {shape}")
    return Strength(vector, alpha)


@contextmanager
def steer(
    model: nn.Module,
    layer: int,
    vector: Tensor,
    alpha: float | Tensor,
    positions: Positions = "prompt_end+generated",
    *,
    prompt_len: int | Tensor | None = None,
    project: bool = False,
    columns: Columns | None = None,
) -> Iterator[Steering]:
    """Add ``alpha * vector`` after decoder layer `layer` of `model` inside the ``with`` block.

    Args:
        model: the causal LM that will be called (its forward or ``generate``).
        layer: decoder-layer index, negative counts from the end.
        vector: (hidden_size,) steering vector, any dtype/device (cast inside the hook).
        alpha: a float, or a (B,) tensor of per-row strengths; mutable via the yielded object.
        positions: which positions are steered (see `Positions`).
        prompt_len: the padded prompt width (columns of the prompt), or a (B,) tensor of
            per-row widths; required unless ``positions == "all"`` (or `columns` holds it).
        project: remove ``alpha`` times the hidden state's component along the unit vector
            instead of adding the vector (`Projection`).
        columns: the model's `Columns`, already watching it (several layers steered at once
            share one); by default one of its own, watching `model` for this block.

    Yields the `Steering` object; hooks are removed on exit, also when an exception is raised.
    """
    args = (positions, prompt_len, project, columns)
    with steer_with(model, layer, _fixed_strength(vector, alpha), *args) as steering:
        yield steering


@contextmanager
def steer_with(
    model: nn.Module,
    layer: int,
    strength: Strength,
    positions: Positions = "prompt_end+generated",
    prompt_len: int | Tensor | None = None,
    project: bool = False,
    columns: Columns | None = None,
) -> Iterator[Steering]:
    """`steer` with a `Strength` the caller owns (and may change between forwards)."""
    index = resolve_layer(model, layer)
    with ExitStack() as stack:
        if columns is None:
            columns = stack.enter_context(Columns(prompt_len).watch(model))
        elif prompt_len is not None:
            columns.prompt_len = prompt_len
        cls = Projection if project else Steering
        steering = cls(index, strength, columns, positions, model_type(model))
        stack.enter_context(LayerHooks.of(decoder_layers(model)[index]).add(steering.hook))
        yield steering

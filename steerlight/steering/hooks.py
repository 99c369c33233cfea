"""Activation-steering hooks: add `alpha * v` to the residual stream after one decoder layer.

Which token positions are steered is decided from ABSOLUTE columns of the (left-padded)
sequence, so the same rule holds on the full prompt pass and on every single-token cache step:

- ``"generated"``: columns ``>= prompt_len`` (the generated tokens only),
- ``"prompt_end+generated"``: columns ``>= prompt_len - 1`` (last prompt token + generated),
- ``"all"``: every column.

Pad positions (attention mask 0) are never steered.

How the columns are found: a forward PRE-hook on the model handed to `steer` reads the length T
of the current chunk (``input_ids`` or ``inputs_embeds``) and

1. with a 2D ``attention_mask`` (B, past + T): the chunk covers ``[mask_len - T, mask_len)``.
   ``model.generate`` appends a column of ones at every step (also for chunked prefill);
2. without one (``generate`` drops an all-ones mask, Mamba drops it on every decode step,
   compileable caches turn it into a 4D one): the columns are COUNTED. After every forward the
   post-hook records ``start + T`` for the cache object passed in and the one returned, so the
   next forward on that cache starts there, whatever the cache holds (attention keys, a
   state-space state, a model's own layers). A forward without a cache starts at column 0 (a
   full pass: models without a KV cache recompute the whole sequence at every step). A cache
   never seen in this block (the one ``generate`` builds before its first forward, one filled
   outside) starts at the length it reports, or at 0 when it reports none and holds no state
   yet (a fresh state-space cache); otherwise the forward stops with an error.

The layer's forward hook then adds ``alpha * v * position_mask`` to the layer's output hidden
states (a tensor, or element 0 of a tuple), which must be (batch, T, hidden): a layout with more
positions or several residual streams stops with an error naming the model type. It is
registered with ``prepend=True`` so Transformers' own output-capturing hooks
(``output_hidden_states``) record the steered hidden states.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from steerlight.model.generation import CACHE_NAMES, output_cache
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


def _reported_length(cache: Any) -> int:
    """Columns held by a cache this context has not seen: its own count, 0 when it holds none.

    Raises where it cannot tell (a state-space cache that already holds a state).
    """
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # legacy tuples of (key, value)
    try:
        return int(cache.get_seq_length())
    except (AttributeError, TypeError, ValueError):  # no count: linear attention before 5.25
        pass
    has_previous_state = getattr(cache, "has_previous_state", None)
    try:
        holds_state = bool(has_previous_state()) if callable(has_previous_state) else True
    except (TypeError, ValueError):
        holds_state = True
    if not holds_state:
        return 0
    raise RuntimeError(
        f"cannot tell which columns this forward covers: its {type(cache).__name__} was filled "
        "outside the steer() block and reports no length; fill it inside the block or pass the "
        "2D attention_mask"
    )


class _ColumnCounter:
    """Columns fed so far into each cache object seen inside one `steer` block.

    Held weakly where the object allows it (a finished generation's cache is not kept alive);
    at most `KEEP` entries, the most recent first (DAC uses two caches at a time).
    """

    KEEP = 8

    def __init__(self) -> None:
        self._entries: list[tuple[Callable[[], Any], int]] = []

    def get(self, cache: Any) -> int | None:
        for ref, columns in self._entries:
            if ref() is cache:
                return columns
        return None

    def set(self, cache: Any, columns: int) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(cache)
        except TypeError:  # tuples and lists cannot be weakly referenced
            ref = lambda: cache  # noqa: E731
        alive = [(r, c) for r, c in self._entries if r() is not None and r() is not cache]
        self._entries = [(ref, columns), *alive][: self.KEEP]

    def clear(self) -> None:
        self._entries = []


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

    def first(self, names: tuple[str, ...], args: tuple, kwargs: dict) -> Any:
        """The first of `names` that was passed and is not None."""
        for name in names:
            value = self.get(name, args, kwargs)
            if value is not None:
                return value
        return None


class Steering:
    """Steering state shared by the hooks of one `steer` context.

    ``alpha`` and ``vector`` are mutable: assign them between forward passes (e.g. in a
    hand-written decoding loop) and the next forward uses them. ``alpha`` is a float, a (B,)
    tensor of per-row strengths, or a (B, T) tensor giving each column of the next chunk its own
    strength; ``vector`` is (hidden,) or (T, hidden), one vector per column of the next chunk
    (how DAC recomputes a sequence whose columns were steered at different steps). In-place
    edits of the alpha tensor are seen too.
    """

    def __init__(
        self,
        layer: int,
        vector: Tensor,
        alpha: float | Tensor,
        positions: Positions = "prompt_end+generated",
        prompt_len: int | None = None,
        model_type: str = "model",
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions != "all" and prompt_len is None:
            raise ValueError(f"positions={positions!r} needs prompt_len (the padded prompt width)")
        if not isinstance(vector, Tensor) or vector.ndim != 1:
            shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
            raise ValueError(
                f"the steering vector must be a 1-D tensor (hidden_size,), got {shape}"
            )
        self.layer = layer
        self.vector = vector
        self.positions: Positions = positions
        self.prompt_len = prompt_len  # type: ignore[assignment]  (the setter checks it)
        self.model_type = model_type
        self.alpha = alpha  # type: ignore[assignment]  (the setter normalises it)
        self._columns = _ColumnCounter()
        # Set by the model pre-hook for the forward in flight: (first column, T, valid mask or
        # None) and the cache passed in (recorded with the columns it holds by the post-hook)
        self._chunk: tuple[int, int, Tensor | None] | None = None
        self._cache_in: Any = None

    # ---- strength and vector --------------------------------------------------------------
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

    @property
    def prompt_len(self) -> int | Tensor | None:
        """The padded prompt width: an int, or a (B,) tensor giving each row its own (a decoding
        loop whose rows joined at different columns); assign it between forward passes."""
        return self._prompt_len

    @prompt_len.setter
    def prompt_len(self, value: int | Tensor | None) -> None:
        if isinstance(value, Tensor):
            if value.ndim != 1 or bool((value < 1).any()):
                raise ValueError("a prompt_len tensor must be (rows,) of widths >= 1")
            value = value.detach().long()
        elif value is not None and value < 1:
            raise ValueError(f"prompt_len must be >= 1, got {value}")
        self._prompt_len = value

    @property
    def first_column(self) -> int | Tensor:
        """The first absolute column that is steered (a (B,) tensor for per-row widths)."""
        if self.positions == "all":
            return 0
        assert self._prompt_len is not None
        return self._prompt_len - (1 if self.positions == "prompt_end+generated" else 0)

    def track(self, cache: Any, columns: int) -> None:
        """Declare that `cache` holds the first `columns` columns of the sequence.

        For a cache made outside the model's forward (e.g. a copy of one), so that forwards
        on it without a 2D attention mask know where they start.
        """
        self._columns.set(cache, int(columns))

    def _alpha_is_zero(self) -> bool:
        """True when every strength is 0; only asked of CPU alphas, so it never syncs a device."""
        a = self._alpha
        return a.device.type == "cpu" and bool((a == 0).all())

    # ---- hooks ----------------------------------------------------------------------------
    def _make_model_pre_hook(self, model: nn.Module):
        reader = _ArgReader(model.forward)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = reader.first(("input_ids", "inputs_embeds"), args, kwargs)
            self._cache_in = cache = reader.first(CACHE_NAMES, args, kwargs)
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
                self._chunk = (end - t, t, mask[:, end - t :])
                return
            start = 0 if cache is None else self._columns.get(cache)
            if start is None:
                start = _reported_length(cache)
            self._chunk = (start, t, None)

        return pre_hook

    def _model_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        chunk, cache_in = self._chunk, self._cache_in
        self._chunk = self._cache_in = None
        if chunk is None or output is None:  # the forward raised (the hook always runs)
            return
        end = chunk[0] + chunk[1]
        for cache in (cache_in, output_cache(output)):
            if cache is not None:
                self._columns.set(cache, end)

    def _layer_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        chunk = self._chunk
        if chunk is None:
            raise RuntimeError(
                f"steering hook on layer {self.layer} ran outside a forward of the model passed to "
                "steer(), so the token positions are unknown; call that model (or model.generate)"
            )
        start, t, valid = chunk
        h = layer_hidden_states(output, self.model_type, self.layer, t)
        first = self.first_column
        earliest = int(first.min()) if isinstance(first, Tensor) else first
        if start + t <= earliest or self._alpha_is_zero():
            return None  # nothing steered in this chunk: leave the output untouched (bit-exact)
        steered = self._apply(h, self._scale(h, start, t, valid), self._vector_for(h, t))
        if isinstance(output, Tensor):
            return steered
        rest = list(output[1:])
        return [steered, *rest] if isinstance(output, list) else (steered, *rest)

    def _apply(self, h: Tensor, scale: Tensor, v: Tensor) -> Tensor:
        """The steered hidden states: ``h + scale * v``."""
        return torch.addcmul(h, scale, v)

    def _vector_for(self, h: Tensor, t: int) -> Tensor:
        """The vector(s) cast to `h`: (hidden,) or (T, hidden)."""
        v = self._vector.to(h)  # no-ops once the dtype and device match
        if v.shape[-1] != h.shape[-1]:
            raise ValueError(
                f"steering vector has size {v.shape[-1]} but layer {self.layer}'s hidden size "
                f"is {h.shape[-1]}"
            )
        if v.ndim == 2 and v.shape[0] != t:
            raise ValueError(f"{v.shape[0]} per-column steering vectors for a chunk of {t} tokens")
        return v

    def _scale(self, h: Tensor, start: int, t: int, valid: Tensor | None) -> Tensor:
        """(B | 1, T | 1, 1): strength x steered column x non-pad, per row and column."""
        a = self._alpha.to(h)
        if a.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"alpha has {a.shape[0]} strengths for a batch of {h.shape[0]} rows")
        if a.ndim == 2 and a.shape[1] != t:
            raise ValueError(f"alpha has {a.shape[1]} column strengths for a chunk of {t} tokens")
        scale = a if a.ndim == 2 else a[:, None]  # (B | 1, T | 1)
        first = self.first_column
        if isinstance(first, Tensor):  # per row: (B, T)
            if first.shape[0] != h.shape[0]:
                raise ValueError(f"{first.shape[0]} prompt widths for a batch of {h.shape[0]} rows")
            cols = torch.arange(start, start + t, device=h.device) >= first.to(h.device)[:, None]
            scale = scale * cols.to(h.dtype)
        elif start < first:  # the chunk straddles the first steered column (a prompt pass)
            cols = torch.arange(start, start + t, device=h.device) >= first
            scale = scale * cols.to(h.dtype)
        if valid is not None:
            scale = scale * valid.to(device=h.device, dtype=h.dtype)  # pads are never steered
        return scale.unsqueeze(-1)


class Projection(Steering):
    """Directional ablation: ``h - alpha * r r^T h`` with ``r`` the unit steering vector."""

    def _apply(self, h: Tensor, scale: Tensor, v: Tensor) -> Tensor:
        r = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return h - scale * (h * r).sum(-1, keepdim=True) * r


@contextmanager
def steer(
    model: nn.Module,
    layer: int,
    vector: Tensor,
    alpha: float | Tensor,
    positions: Positions = "prompt_end+generated",
    *,
    prompt_len: int | None = None,
    project: bool = False,
) -> Iterator[Steering]:
    """Add ``alpha * vector`` after decoder layer `layer` of `model` inside the ``with`` block.

    Args:
        model: the causal LM that will be called (its forward or ``generate``).
        layer: decoder-layer index, negative counts from the end.
        vector: (hidden_size,) steering vector, any dtype/device (cast inside the hook).
        alpha: a float, or a (B,) tensor of per-row strengths; mutable via the yielded object.
        positions: which positions are steered (see `Positions`).
        prompt_len: the padded prompt width (columns of the prompt), or a (B,) tensor of
            per-row widths; required unless ``positions == "all"``.
        project: remove ``alpha`` times the hidden state's component along the unit vector
            instead of adding the vector (`Projection`).

    Yields the `Steering` object; hooks are removed on exit, also when an exception is raised.
    """
    index = resolve_layer(model, layer)
    cls = Projection if project else Steering
    steering = cls(index, vector, alpha, positions, prompt_len, model_type(model))
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
        steering._chunk = steering._cache_in = None
        steering._columns.clear()

"""Column accounting: which absolute columns of the (left-padded) sequence each forward covers.

A hook inside a decoder layer sees a chunk of T positions, not where they sit in the sequence:
on the prompt pass they are columns ``[0, P)``, on a cached decode step the one column after
the cache, in a loop that refills rows (`steerlight.model.refill`) each row's prompt ends at
its own column. `Columns` answers that question for every forward of one model, and holds the
per-row prompt widths a decoding loop sets as rows join and leave.

How the columns are found: a forward PRE-hook on the model (`Columns.watch`) reads the length T
of the current chunk (``input_ids`` or ``inputs_embeds``) and

1. with a 2D ``attention_mask`` (B, past + T): the chunk covers ``[mask_len - T, mask_len)``.
   ``model.generate`` appends a column of ones at every step (also for chunked prefill);
2. without one (``generate`` drops an all-ones mask, Mamba drops it on every decode step,
   compileable caches turn it into a 4D one): the columns are COUNTED. After every forward the
   post-hook records ``start + T`` for the cache object passed in and the one returned, so the
   next forward on that cache starts there, whatever the cache holds (attention keys, a
   state-space state, a model's own layers). A forward without a cache starts at column 0 (a
   full pass: models without a KV cache recompute the whole sequence at every step). A cache
   never seen while watched (the one ``generate`` builds before its first forward, one filled
   outside) starts at the length it reports, or at 0 when it reports none and holds no state
   yet (a fresh state-space cache); otherwise the forward stops with an error. A cache made
   outside the model's forward (a copy of one) is declared with `Columns.track`.

`Columns.chunk` is the answer for the forward in flight: (first column, T, the chunk's 2D mask
or None). It knows nothing of steering: the steering hooks (`steerlight.steering.hooks`) ask it.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from torch import Tensor, nn

from steerlight.model.generation import CACHE_NAMES, output_cache


class Chunk(NamedTuple):
    """The columns of the forward in flight."""

    start: int | Tensor
    """The first absolute column (a 0-dim tensor in a compiled decode step, whose graph must
    not hold it as a constant: `steerlight.model.compiled`)."""
    length: int
    """T: the positions fed."""
    valid: Tensor | None
    """(B, T) attention mask of those columns (0 on pads), or None without a 2D mask."""


def _reported_length(cache: Any) -> int:
    """Columns held by a cache not seen while watched: its own count, 0 when it holds none.

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
    """Columns fed so far into each cache object seen while watched.

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


class Columns:
    """The columns of every forward of one model (`watch`), and the rows' prompt widths.

    ``prompt_len`` is the padded prompt width: an int, or a (B,) tensor giving each row its own
    (a decoding loop whose rows joined at different columns); assign it between forwards.
    """

    def __init__(self, prompt_len: int | Tensor | None = None) -> None:
        self.prompt_len = prompt_len  # type: ignore[assignment]  (the setter checks it)
        self._counter = _ColumnCounter()
        # Set by the pre-hook for the forward in flight, with the cache passed in (recorded
        # with the columns it holds by the post-hook)
        self.chunk: Chunk | None = None
        self._cache_in: Any = None

    @property
    def prompt_len(self) -> int | Tensor | None:
        """The padded prompt width (int), per-row widths ((B,) long tensor) or None."""
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

    def track(self, cache: Any, columns: int) -> None:
        """Declare that `cache` holds the first `columns` columns of the sequence.

        For a cache made outside the model's forward (e.g. a copy of one), so that forwards
        on it without a 2D attention mask know where they start.
        """
        self._counter.set(cache, int(columns))

    @contextmanager
    def watch(self, model: nn.Module) -> Iterator[Columns]:
        """Find the columns of every forward of `model` inside the ``with`` block."""
        handles = [
            model.register_forward_pre_hook(self._pre_hook(model), with_kwargs=True),
            model.register_forward_hook(self._post_hook, always_call=True),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.chunk = self._cache_in = None
            self._counter.clear()

    def _pre_hook(self, model: nn.Module):
        reader = _ArgReader(model.forward)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = reader.first(("input_ids", "inputs_embeds"), args, kwargs)
            self._cache_in = cache = reader.first(CACHE_NAMES, args, kwargs)
            if x is None:
                self.chunk = None
                return
            t = int(x.shape[1])
            mask = reader.get("attention_mask", args, kwargs)
            if isinstance(mask, Tensor) and mask.ndim == 2:
                end = int(mask.shape[1])
                if end < t:
                    raise ValueError(
                        f"attention_mask covers {end} columns but the input has {t} tokens"
                    )
                self.chunk = Chunk(end - t, t, mask[:, end - t :])
                return
            start = 0 if cache is None else self._counter.get(cache)
            if start is None:
                start = _reported_length(cache)
            self.chunk = Chunk(start, t, None)

        return pre_hook

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        chunk, cache_in = self.chunk, self._cache_in
        self.chunk = self._cache_in = None
        if chunk is None or output is None:  # the forward raised (the hook always runs)
            return
        end = chunk.start + chunk.length
        for cache in (cache_in, output_cache(output)):
            if cache is not None:
                self._counter.set(cache, end)

"""A compiled greedy decode: a static KV cache and one ``torch.compile``'d decode step.

Eager decoding of a small model is launch-bound on a GPU (issue 26: 1% of the card's copy
bandwidth at the 1.1B shape). Here every decode step has the same shapes, so one compiled
graph (CUDA graphs on a GPU) serves the whole decode, every trial of a search and every batch:

- the KV cache is Transformers' `StaticCache` (full-attention layers: `STATIC_LAYERS`), its
  length rounded up to `COLUMN_BUCKET` columns and its rows to a power of two (`row_bucket`;
  the spare rows repeat a prompt and are dropped), and kept for the next call of that shape;
- the steering hooks run inside the graph: each decoder layer's `LayerHooks` is the same
  object at every call (`steerlight.model.layer_hooks`), the step's column is a 0-dim tensor
  (`Columns.chunk`) and the prompt widths a (rows,) tensor, so alpha, the vector, the layer's
  values and the column are graph inputs, not constants: a new trial reuses the graph. Which
  layers steer, and how (add or project, which positions), picks the graph: the first trial at
  a layer compiles, later ones at it do not (`tests/model/test_compiled.py` counts them).

The prompt pass runs eagerly (its shape changes with every batch), on the same cache. Rows are
decoded in groups of `slots` (padded batching: a finished row's slot stays in the graph until
its group ends) with the tokens of `refill_generate`: greedy, each row's own columns.

What it does not decode (`unsupported` says why, once per reason in the log, and the caller
decodes the plain way): sampling, rows with strengths of their own, models whose cache is not
all full-attention layers (sliding-window, state-space, hybrid and models' own caches), and
models with forward hooks inside them that steerlight did not add (a compiled graph would keep
running them after they are removed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerlight.model.columns import Chunk, Columns
from steerlight.model.generation import (
    ChunkForward,
    Generation,
    GenerationSettings,
    StopMatcher,
    collect,
    pad_token_id,
    split_rows,
    stop_token_ids,
)
from steerlight.model.layer_hooks import LayerHooks, pinned
from steerlight.model.layers import decoder_layers

log = logging.getLogger(__name__)

COLUMN_BUCKET = 256
"""The static cache's length is a multiple of this many columns (one graph per multiple)."""

BACKEND: str | Callable = "inductor"
"""``torch.compile``'s backend (tests count compilations with one of their own)."""

GRAPHS = 64
"""Graphs kept per model forward (``torch._dynamo``'s recompile limit, 8 by default, while a
compiled decode runs): one per steered layer set, positions rule, row bucket and length bucket
a run meets. Past it, the step runs eagerly (the same tokens, slower; torch warns)."""

STATIC_LAYERS = ("StaticLayer",)
"""Transformers' static cache layers a compiled step decodes on. Its sliding-window layer counts
columns in a Python int (to branch on a full window), so every step would compile anew."""


def row_bucket(rows: int) -> int:
    """Rows the compiled step decodes for `rows` prompts: the next power of two."""
    return 1 << max(0, rows - 1).bit_length()


class _Compiled:
    """A model's compiled forward and the static cache it last decoded on."""

    def __init__(self, model: nn.Module, backend: str | Callable) -> None:
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        self.backend = backend
        self.forward = torch.compile(model.forward, backend=backend, mode=mode, dynamic=False)
        self.cache: Any = None
        self.cache_shape: tuple[int, int] | None = None

    def static_cache(self, model: nn.Module, rows: int, length: int) -> Any:
        """An empty static cache of `length` columns (for `rows` rows, made by the prefill)."""
        from transformers import StaticCache

        if self.cache_shape != (rows, length):
            self.cache = StaticCache(config=model.config, max_cache_len=length)
            self.cache_shape = (rows, length)
        else:
            self.cache.reset()
        return self.cache


_SAID: set[tuple[str, str]] = set()


def compiled_for(model: nn.Module, backend: str | Callable | None = None) -> _Compiled:
    """The model's `_Compiled` for `backend` (default `BACKEND`), made on first use."""
    backend = BACKEND if backend is None else backend
    compiled = getattr(model, "_steerlight_compiled", None)
    if compiled is None or compiled.backend is not backend:
        # (kept on the model: a cycle the collector frees with it, not a table that pins it)
        compiled = model._steerlight_compiled = _Compiled(model, backend)
    return compiled


def unsupported(model: nn.Module, settings: GenerationSettings, fixed_rows: bool) -> str | None:
    """Why the compiled decode cannot give this call's tokens (None: it can)."""
    from transformers import StaticCache, cache_utils

    if settings.do_sample:
        return "it decodes greedily (do_sample is on)"
    if fixed_rows:
        return "rows have steering strengths of their own"
    if ChunkForward(model, padded=True).cache_name not in ("cache", "past_key_values"):
        return "the model takes no Transformers cache"
    try:
        layers = StaticCache(config=model.config, max_cache_len=COLUMN_BUCKET).layers
    except (TypeError, ValueError, AttributeError, NotImplementedError) as err:
        return f"Transformers makes no static cache for it ({err})"
    kinds = {type(layer).__name__ for layer in layers}
    if any(
        type(layer).__name__ not in STATIC_LAYERS or type(layer).__module__ != cache_utils.__name__
        for layer in layers
    ):
        return f"its static cache has layers of kind {sorted(kinds - set(STATIC_LAYERS))}"
    for name, module in model.named_modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if module is not model and not all(map(_ours, hooks)):
            return f"its module {name} has a forward hook steerlight did not add"
    return None


def _ours(hook: Any) -> bool:
    """A hook that may stay in a compiled graph: a `LayerHooks`, or Transformers' own (the
    output capturing it installs for good, idle unless a forward asks for hidden states)."""
    return isinstance(hook, LayerHooks) or getattr(hook, "__module__", "").startswith(
        "transformers."
    )


def _say_once(model: nn.Module, why: str) -> None:
    name = getattr(model.config, "model_type", type(model).__name__)
    if (name, why) not in _SAID:
        _SAID.add((name, why))
        log.info("model.generation.compile: %s decodes the plain way here: %s", name, why)


@torch.no_grad()
def compiled_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings,
    stop_strings: Sequence[str] = (),
    slots: int | None = None,
    columns: Columns | None = None,
    on_finish: Callable[[int], None] | None = None,
    *,
    fixed_rows: bool = False,
    backend: str | Callable | None = None,
) -> Generation | None:
    """`refill_generate`'s tokens for a left-padded batch, decoded by a compiled step on a
    static cache `slots` rows at a time; None (logged once) where `unsupported` says why not.

    `columns` is the `Columns` the steering hooks read (a `steer` block's); its prompt widths
    are set per group and given back as they were.
    """
    why = unsupported(model, settings, fixed_rows)
    if why is not None:
        _say_once(model, why)
        return None
    compiled = compiled_for(model, backend)
    pad_id = pad_token_id(model, tokenizer)
    decode = _Decode(model, compiled, settings, stop_token_ids(model, tokenizer), columns)
    stopped = StopMatcher(tokenizer, stop_strings)
    rows: list[list[int]] = []
    widths = columns.prompt_len if columns is not None else None
    try:
        with torch._dynamo.config.patch(recompile_limit=GRAPHS):
            for ids, mask in split_rows(input_ids, attention_mask, slots or len(input_ids)):
                rows += decode(ids, mask, stopped, on_finish)
    finally:
        if columns is not None:
            columns.chunk, columns.prompt_len = None, widths
    return collect(rows, pad_id, tokenizer, stop_strings, input_ids.device)


class _Decode:
    """Greedy decoding of one group of rows on the compiled step."""

    def __init__(
        self,
        model: nn.Module,
        compiled: _Compiled,
        settings: GenerationSettings,
        eos_ids: list[int],
        columns: Columns | None,
    ) -> None:
        self.model = model
        self.compiled = compiled
        self.max_new_tokens = settings.max_new_tokens
        self.eos = set(eos_ids)
        self.columns = columns
        self.prefill = ChunkForward(model, padded=True, call=model.forward)
        self.step = ChunkForward(model, padded=True, call=compiled.forward)

    def __call__(
        self,
        ids: Tensor,
        mask: Tensor,
        stopped: StopMatcher,
        on_finish: Callable[[int], None] | None,
    ) -> list[list[int]]:
        n, width = ids.shape
        bucket = row_bucket(n)
        ids = torch.cat([ids, ids[-1:].expand(bucket - n, -1)])
        mask = torch.cat([mask, mask[-1:].expand(bucket - n, -1)])
        length = math.ceil((width + self.max_new_tokens) / COLUMN_BUCKET) * COLUMN_BUCKET
        cache = self.compiled.static_cache(self.model, bucket, length)
        if self.columns is not None:
            self.columns.prompt_len = torch.full((bucket,), width, device=ids.device)
        layers = decoder_layers(self.model)
        new: list[list[int]] = [[] for _ in range(n)]
        running = set(range(n))
        with pinned(layers):  # (every layer's hook in the graph, steered or not)
            self._chunk(0, width, mask)
            logits, cache = self.prefill(ids, mask, cache, width)
            for column in range(width, width + self.max_new_tokens):
                nxt = logits.argmax(-1)
                finished = self._advance(nxt.tolist(), new, running, stopped)
                if on_finish is not None and finished:
                    on_finish(finished)
                if not running:
                    break
                ids = torch.cat([ids, nxt[:, None].to(ids)], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                self._chunk(torch.tensor(column, device=ids.device), 1, None)
                logits, cache = self.step(ids, mask, cache, 1)
        return new  # (the last step's tokens end every row: max_new_tokens)

    def _chunk(self, start: int | Tensor, length: int, valid: Tensor | None) -> None:
        if self.columns is not None:
            self.columns.chunk = Chunk(start, length, valid)

    def _advance(
        self, tokens: list[int], new: list[list[int]], running: set[int], stopped: StopMatcher
    ) -> int:
        """Append each running row's token; returns how many rows finished."""
        finished = 0
        for i in sorted(running):
            new[i].append(tokens[i])
            row = new[i]
            if tokens[i] in self.eos or len(row) >= self.max_new_tokens or stopped(row):
                running.discard(i)
                finished += 1
        return finished

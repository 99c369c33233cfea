"""Greedy generation with row refill: when a row stops, its slot takes the next prompt.

`refill_generate` takes the same left-padded batch as `generate` and returns the same
`Generation`, but decodes it with at most `slots` rows at a time: a finished row leaves the
cache (``reorder_cache``, the beam-search reorder every Transformers cache layer implements)
and the next prompts are prefilled on their own, left-padded to the running width, and joined
to the cache row-wise (`join_cache_rows`). No step decodes a finished row.

Why the tokens are those of padded batching: each row sees only its own columns (pads are
masked, position ids come from the mask), so a row's greedy tokens do not depend on its
neighbours or its padding; the tests check this against `generate` on several architectures.
Rows that joined at different columns get their own prompt widths (`Columns.prompt_len` as a
(rows,) tensor, for hooks that ask which columns are the prompt's, such as steering's), so the
same columns are steered as in `generate`.

Prompts are taken longest first, so a later prompt always fits in the running width. Sampling
and caches whose rows cannot be joined (a model's own cache class or layer kind, static caches,
models without a cache) use `generate` on `slots` rows at a time, each group as collated alone;
rows that must not move (``fixed_rows``: per-row steering strengths) use it on every row at
once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerlight.model.columns import Columns
from steerlight.model.compiled import compiled_generate
from steerlight.model.generation import (
    ChunkForward,
    Generation,
    GenerationSettings,
    StopMatcher,
    check_left_padded,
    collect,
    generate,
    in_batches,
    pad_token_id,
    stop_token_ids,
)
from steerlight.model.growing import GrowingLayer, grow_in_place
from steerlight.model.prefix import PrefixCache, common_prefix

JOINABLE = (
    "DynamicLayer",
    "DynamicSlidingWindowLayer",
    "LinearAttentionLayer",
    "LinearAttentionAndFullAttentionLayer",
    "LinearAttentionAndSlidingWindowAttentionLayer",
)
"""Transformers' cache layers whose state is a set of (rows, ...) tensors `join_cache_rows`
knows: keys and values, conv and recurrent states."""


MIN_TRIM = 8
"""Fewest all-pad leading columns worth a copy of the cache to drop (`_trim_pads`)."""


def joinable(cache: Any) -> bool:
    """Whether `join_cache_rows` can join rows of this cache exactly."""
    from transformers import cache_utils

    layers = getattr(cache, "layers", None)
    return (
        type(cache) is cache_utils.DynamicCache
        and bool(layers)
        and all(
            type(layer) is GrowingLayer
            or (type(layer).__name__ in JOINABLE and type(layer).__module__ == cache_utils.__name__)
            for layer in layers
        )
    )


def join_cache_rows(cache: Any, other: Any) -> None:
    """Append `other`'s rows to `cache` (in place).

    Both end at the same column; `other` may hold fewer columns (a shorter prefill): its keys
    and values get zero columns in front, which the rows' attention masks hide (pads). Conv and
    recurrent states have no column axis.
    """
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        for name in ("keys", "values"):
            a, b = getattr(mine, name, None), getattr(theirs, name, None)
            if isinstance(a, Tensor) and a.numel() and isinstance(b, Tensor):
                missing = a.shape[-2] - b.shape[-2]
                if missing < 0 or a.shape[1:-2] != b.shape[1:-2]:
                    raise ValueError(f"cache rows of shapes {a.shape} and {b.shape} cannot join")
                front = b.new_zeros(*b.shape[:-2], missing, b.shape[-1])
                setattr(mine, name, torch.cat([a, torch.cat([front, b], dim=-2)]))
        for name in ("conv_states", "recurrent_states"):
            states, more = getattr(mine, name, None), getattr(theirs, name, None)
            if isinstance(states, dict):
                for i, a in states.items():
                    if isinstance(a, Tensor):
                        states[i] = torch.cat([a, more[i]])


def _left_pad(rows: Sequence[Tensor], width: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of unpadded 1-D prompts, each left-padded to `width` columns."""
    ids = rows[0].new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


class _Prefix(NamedTuple):
    """A call's shared prompt prefix: its cache and its length in tokens."""

    cache: PrefixCache
    shared: int


class _Active:
    """The rows in flight: their question index, ids, mask, prompt widths and new tokens."""

    def __init__(self, ids: Tensor) -> None:
        self.index: list[int] = []
        self.ids = ids[:0, :0]
        self.mask = ids[:0, :0]
        self.prompt_len = torch.zeros(0, dtype=torch.long)
        self.new: list[list[int]] = []


@torch.no_grad()
def refill_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings | None = None,
    stop_strings: Sequence[str] = (),
    slots: int | None = None,
    columns: Columns | None = None,
    on_finish: Callable[[int], None] | None = None,
    *,
    fixed_rows: bool = False,
) -> Generation:
    """`generate`'s completions, decoded `slots` rows at a time with row refill.

    Args:
        slots: rows decoded at once (default: all; fewer is where refill saves work).
        columns: the `Columns` watching `model` (a `steer` block's), whose prompt widths
            this loop sets per row (its ``prompt_len`` must be the batch's padded width).
        on_finish: called with the number of rows that just finished (progress reports).
        fixed_rows: every row keeps its place in the batch (per-row steering strengths): no
            refill, `generate` on every row at once.
    """
    settings = settings or GenerationSettings()
    check_left_padded(input_ids, attention_mask)
    if settings.compile:
        args = (input_ids, attention_mask, settings, stop_strings, slots, columns, on_finish)
        compiled = compiled_generate(model, tokenizer, *args, fixed_rows=fixed_rows)
        if compiled is not None:
            return compiled
    forward = ChunkForward(model, padded=True)
    if (
        settings.do_sample
        or forward.cacheless
        or forward.cache_name not in ("cache", "past_key_values")
        or fixed_rows
    ):
        groups = None if fixed_rows else slots  # (rows that must not move: all at once)
        args = (input_ids, attention_mask, settings, stop_strings, groups, columns, on_finish)
        return _fallback(model, tokenizer, *args)
    eos_ids = stop_token_ids(model, tokenizer)
    eos = set(eos_ids)
    pad_id = pad_token_id(model, tokenizer)
    prompts = [row[m.bool()] for row, m in zip(input_ids, attention_mask, strict=True)]
    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first
    slots = len(prompts) if slots is None else max(1, slots)
    done: dict[int, list[int]] = {}
    stopped = StopMatcher(tokenizer, stop_strings)
    active, cache = _Active(input_ids), None
    prefix = _Prefix(PrefixCache(), common_prefix(prompts)) if settings.prefix_reuse else None
    # Rows join in groups (a prefill per group, not per finished row), or when nothing runs.
    group = max(1, slots // 4)
    while queue or active.index:
        free = slots - len(active.index)
        ready = free >= min(group, len(queue)) or not active.index
        joining, queue = (queue[:free], queue[free:]) if ready else ([], queue)
        logits = None
        if active.index:
            logits, cache = _step(forward, columns, active, cache)
        if joining:
            new_logits, cache = _join(
                forward, columns, active, cache, prompts, joining, pad_id, prefix,
                grow=settings.cache_in_place,
            )  # fmt: skip
            if cache is None:  # not joinable: the whole batch the plain way
                args = (input_ids, attention_mask, settings, stop_strings, slots, columns)
                return _fallback(model, tokenizer, *args, on_finish)
            logits = new_logits if logits is None else torch.cat([logits, new_logits])
        nxt = logits.argmax(-1)
        keep = _advance(active, nxt, eos, stopped, settings.max_new_tokens, done)
        if len(keep) < len(active.index):
            if on_finish is not None:
                on_finish(len(active.index) - len(keep))
            _keep_rows(active, cache, keep)
            if keep:
                _trim_pads(active, cache, columns)
    rows = [done[i] for i in range(len(prompts))]
    return collect(rows, pad_id, tokenizer, stop_strings, input_ids.device)


def _fallback(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings,
    stop_strings: Sequence[str],
    slots: int | None,
    columns: Columns | None,
    on_finish: Callable[[int], None] | None,
) -> Generation:
    """`generate`, `slots` rows at a time, each group steered at its own prompt width."""

    def batch(ids: Tensor, mask: Tensor) -> Generation:
        _set_widths(columns, ids.shape[1])
        return generate(model, tokenizer, ids, mask, settings, stop_strings)

    pad_id = pad_token_id(model, tokenizer)
    return in_batches(batch, input_ids, attention_mask, slots, pad_id, on_finish)


def _set_widths(columns: Columns | None, widths: Tensor | int) -> None:
    if columns is not None:
        columns.prompt_len = widths


def _step(
    forward: ChunkForward, columns: Columns | None, active: _Active, cache: Any
) -> tuple[Tensor, Any]:
    """One decoding step of the active rows (their last token is not in the cache yet)."""
    _set_widths(columns, active.prompt_len)
    return forward(active.ids, active.mask, cache, 1)


def _join(
    forward: ChunkForward,
    columns: Columns | None,
    active: _Active,
    cache: Any,
    prompts: list[Tensor],
    joining: list[int],
    pad_id: int,
    prefix: _Prefix | None = None,
    *,
    grow: bool = True,
) -> tuple[Tensor | None, Any]:
    """Prefill the `joining` prompts (padded to the longest of them; on the shared `prefix`'s
    cache where there is one) and add them to the active rows, whose running width they fit
    (longest prompts come first).

    Returns their next-token logits and the joined cache (None: the cache cannot join rows).
    """
    rows = [prompts[i] for i in joining]
    width = max(len(row) for row in rows)
    running = active.ids.shape[1] if active.index else width
    if width > running:
        raise AssertionError("prompts are taken longest first, so they fit the running width")
    # In `generate` the row's prompt ends at its batch's width; here at `width` in its own
    # prefill and at `running` once joined: the steered columns follow each row's prompt end.
    _set_widths(columns, torch.full((len(joining),), width, dtype=torch.long))
    reused = prefix and prefix.cache.prefill(forward, rows, prefix.shared, pad_id)
    if reused:
        ids, mask, logits, new_cache = reused
    else:
        ids, mask = _left_pad(rows, width, pad_id)
        logits, new_cache = forward(ids, mask, None, width)
    if not joinable(new_cache):
        return None, None
    if not active.index:  # nothing in flight: the new rows' cache is the cache
        cache = grow_in_place(new_cache) if grow else new_cache
        active.ids, active.mask = ids[:0], mask[:0]
    else:
        join_cache_rows(cache, new_cache)
    ids = torch.nn.functional.pad(ids, (running - width, 0), value=pad_id)
    mask = torch.nn.functional.pad(mask, (running - width, 0), value=0)
    widths = torch.full((len(joining),), running, dtype=torch.long)
    active.index += joining
    active.ids = torch.cat([active.ids, ids])
    active.mask = torch.cat([active.mask, mask])
    active.prompt_len = torch.cat([active.prompt_len, widths])
    active.new += [[] for _ in joining]
    return logits, cache


def _advance(
    active: _Active,
    nxt: Tensor,
    eos: set[int],
    stopped: StopMatcher,
    max_new_tokens: int,
    done: dict[int, list[int]],
) -> list[int]:
    """Append the next tokens; move finished rows to `done`. Returns the rows that go on."""
    keep = []
    for i, tok in enumerate(nxt.tolist()):
        new = active.new[i]
        new.append(tok)
        if tok in eos or len(new) >= max_new_tokens or stopped(new):
            done[active.index[i]] = new
        else:
            keep.append(i)
    active.ids = torch.cat([active.ids, nxt[:, None].to(active.ids)], dim=1)
    active.mask = torch.cat([active.mask, torch.ones_like(active.mask[:, :1])], dim=1)
    return keep


def _keep_rows(active: _Active, cache: Any, keep: list[int]) -> None:
    """Only the rows `keep` stay in flight (and in the cache)."""
    index = torch.tensor(keep, dtype=torch.long, device=active.ids.device)
    if keep:
        cache.reorder_cache(index)
    active.index = [active.index[i] for i in keep]
    active.new = [active.new[i] for i in keep]
    active.ids, active.mask = active.ids[index], active.mask[index]
    active.prompt_len = active.prompt_len[index.cpu()]


def _trim_pads(active: _Active, cache: Any, columns: Columns | None) -> None:
    """Drop the leading columns that are padding in every row (left by rows that finished).

    Masked columns change no row's attention and positions come from the mask, so this is
    exact; it keeps decoding as narrow as padded batching. Skipped for sliding-window layers,
    whose kept columns follow the window, not the width.
    """
    pads = int(active.mask.any(0).int().argmax())  # (pads in the middle, after a prefix, stay)
    if pads < MIN_TRIM or any("Sliding" in type(layer).__name__ for layer in cache.layers):
        return  # a copy of the cache is worth it only for a few columns at once
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor) and t.numel():
                setattr(layer, name, t[..., pads:, :])
    active.ids, active.mask = active.ids[:, pads:], active.mask[:, pads:]
    active.prompt_len = active.prompt_len - pads
    if columns is not None:  # for forwards without a mask (Mamba): the cache's columns
        columns.track(cache, active.ids.shape[1] - 1)

"""Shared-prefix reuse: a prompt prefix that every row starts with is run once, not per row.

Few-shot prompts open with the same exemplars (lm-eval's ``gsm8k`` takes the first n train
exemplars for every question) and chat prompts with the same system turn, so most of a
prefill re-reads one prefix. `PrefixCache` runs that prefix as one row, keeps its KV cache,
and gives each group of prompts a copy with a row per prompt; the rows' own tokens are then
fed on top of it, left-padded among themselves:

    ids   [ prefix (shared)  | pads    | own tokens ]
    mask  [ 1 ...          1 | 0 ... 0 | 1 ...    1 ]

Position ids come from the mask, so a row's real tokens keep the positions they have in its
plain prompt, and the pads are masked: each row computes what it computes alone (the tests
check the greedy tokens against the plain prefill on several architectures and on the real
model). The prefix is found on token ids (the longest prefix all prompts of a call share,
leaving each at least one token of its own), so how text tokenizes across the boundary never
matters.

Exact only where pads in the middle change nothing: every cache layer is a full-attention
`DynamicLayer` (a sliding window would spend slots on the pads, a state-space state would decay
over them) and the model takes position ids. Elsewhere the prefill is the plain one, said once
in the log.

The prefix is run under whatever hooks are active (it is part of the prompt): a steering that
touches its columns (``positions: all``) steers it, so a `PrefixCache` must not outlive the
steering it was filled under. `refill_generate` makes one per call.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from steerlight.model.generation import ChunkForward, repeat_cache_rows

log = logging.getLogger(__name__)

MIN_PREFIX = 16
"""Fewest shared tokens worth a prefill of their own."""


WINDOWS = ("sliding_window", "window_size", "attention_window", "local_window_size")
"""Config fields of local attention, whose window would count the pads in the middle."""


def common_prefix(prompts: list[Tensor]) -> int:
    """Length of the longest token prefix all `prompts` (1-D id tensors) share, leaving each
    prompt at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    if shortest < 2:
        return 0
    heads = torch.stack([p[: shortest - 1] for p in prompts])
    differs = (heads != heads[:1]).any(0).nonzero()
    return int(differs[0]) if len(differs) else shortest - 1


def exact_here(forward: ChunkForward, cache: Any) -> str | None:
    """Why middle pads would change this model's results (None: they change nothing)."""
    from transformers import cache_utils

    if not forward.position_ids:
        return "its forward takes no position ids"
    config = forward.model.config.get_text_config()
    windowed = [k for k in WINDOWS if getattr(config, k, None)]
    if windowed:
        return f"it attends through a window ({', '.join(windowed)})"
    kinds = set(getattr(config, "layer_types", None) or ()) - {"full_attention"}
    if kinds:
        return f"it has {', '.join(sorted(kinds))} layers, not only full attention"
    if type(cache) is not cache_utils.DynamicCache:
        return f"its cache is {type(cache).__name__}, not a DynamicCache"
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds != {"DynamicLayer"} or any(
        type(layer).__module__ != cache_utils.__name__ for layer in cache.layers
    ):
        return f"its cache layers are {', '.join(sorted(kinds))}, not only full attention"
    return None


class PrefixCache:
    """The KV cache of a shared prompt prefix (the last one asked for), for one model under one
    steering. `prefilled_tokens` counts the prefix tokens it ran, `reused_tokens` those its rows
    took from the cache instead of running them."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] = ()
        self._cache: Any = None
        self.unsupported: str | None = None
        self.prefilled_tokens = 0
        self.reused_tokens = 0

    def prefill(
        self, forward: ChunkForward, prompts: list[Tensor], shared: int, pad_id: int
    ) -> tuple[Tensor, Tensor, Tensor, Any] | None:
        """Prefill `prompts` (1-D ids) on the cache of (at most) their first `shared` tokens.

        Returns (ids, mask, next-token logits, cache) with the rows laid out as the module
        docstring shows (width: the longest prompt), or None where reuse does not apply (a
        prefix under `MIN_PREFIX` tokens, or a model where it would not be exact).
        """
        shared = self.cache_of(forward, prompts[0][:shared])
        if not shared:
            return None
        prefix = self._cache
        index = torch.zeros(len(prompts), dtype=torch.long, device=prompts[0].device)
        cache = repeat_cache_rows(prefix, index)
        own = [p[shared:] for p in prompts]
        width = max(len(o) for o in own)
        ids = prompts[0].new_full((len(prompts), shared + width), pad_id)
        mask = torch.zeros_like(ids)
        ids[:, :shared], mask[:, :shared] = prompts[0][:shared], 1
        for i, o in enumerate(own):
            ids[i, shared + width - len(o) :], mask[i, shared + width - len(o) :] = o, 1
        logits, cache = forward(ids, mask, cache, width)
        self.reused_tokens += shared * len(prompts)
        return ids, mask, logits, cache

    def cache_of(self, forward: ChunkForward, ids: Tensor) -> int:
        """How many leading tokens of `ids` the kept cache holds: the kept prefix where it
        starts `ids` (another batch's, whose shared part ran a token further or shorter), else
        `ids` run now as one row and kept. 0: under `MIN_PREFIX` tokens, or reuse not exact."""
        if self.unsupported is not None or len(ids) < MIN_PREFIX:
            return 0
        key = tuple(ids.tolist())
        n = len(self._key)
        if n >= MIN_PREFIX and key[:n] == self._key:
            return n
        row = ids[None]
        _, cache = forward(row, torch.ones_like(row), None, len(ids))
        self.prefilled_tokens += len(ids)
        why = "it keeps no cache" if cache is None else exact_here(forward, cache)
        if why is not None:
            self.unsupported = why
            name = getattr(forward.model.config, "model_type", type(forward.model).__name__)
            log.info("%s: no shared-prefix reuse (%s); every prompt is prefilled whole", name, why)
            return 0
        self._key, self._cache = key, cache
        return len(key)

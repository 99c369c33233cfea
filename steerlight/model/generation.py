"""Batched generation with the KV cache: greedy by default, seeded sampling on request.

`generate` wraps ``model.generate`` so that decoding is defined by `GenerationSettings` alone:
the model's own ``generation_config`` (which may ship ``do_sample=True``, a temperature, a
``max_length``, ``top_k``, repetition penalties, ...) is set aside for the call, so no hidden
default leaks into an experiment and Transformers prints no "both max_new_tokens and
max_length" style warnings. Steering hooks (`steerlight.steering.hooks.steer`) work unchanged
inside it.

``generate`` keeps Transformers' default KV cache; the row-refill loop's faster ones are
`steerlight.model.growing` (in place) and `steerlight.model.compiled` (static, compiled).

For decoding loops of their own (DAC), `ChunkForward` runs a forward with exactly the inputs
``generate`` would pass and learns whether the model keeps a cache at all, and
`repeat_cache_rows` copies a cache's rows where that is exact for every layer kind
(`reorderable`), and `StopMatcher` checks stop strings on a row's last tokens only.

A stop is a string (cut before it, as lm-eval's ``until``) or a compiled pattern such as
`steerlight.answers.ANSWER_LINE` (cut after its match, newline excluded: the text it matches
is part of the answer). A row also ends at any id of `stop_token_ids`: the tokenizer's EOS, the
generation config's EOS ids and the token a chat template closes the assistant's turn with.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteriaList

from steerlight.model.stops import (
    PatternStop,
    Stop,
    StopMatcher,
    cut_at_stop,
    end_of_turn_id,
    pad_token_id,
    stop_token_ids,
)

__all__ = [  # (stops.py; imported from here)
    "PatternStop",
    "Stop",
    "StopMatcher",
    "cut_at_stop",
    "end_of_turn_id",
    "pad_token_id",
    "stop_token_ids",
]

log = logging.getLogger(__name__)


SPEED_ONLY = ("prefix_reuse", "cache_in_place")
"""`GenerationSettings` fields that change how fast tokens come, never which (the tests hold
each fast path to the plain path's tokens): a study resumed with other values still compares."""


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are decoded."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens per row (EOS and stop strings end a row earlier)."""
    do_sample: bool = False
    """False: greedy (deterministic). True: sample with `temperature` and `top_p`."""
    temperature: float = 1.0
    """Softmax temperature when sampling (ignored for greedy)."""
    top_p: float = 1.0
    """Nucleus mass when sampling; 1.0 keeps the whole distribution (ignored for greedy)."""
    seed: int = 0
    """Seed of the sampling RNG; the global torch RNG is left untouched."""
    prefix_reuse: bool = True
    """Run the token prefix every prompt of a batch shares (few-shot exemplars, a system turn)
    once and start each row from a copy of its cache: the same tokens, a fraction of the
    prefill (`steerlight.model.prefix`; full-attention models, greedy row-refill decoding)."""
    cache_in_place: bool = True
    """Write each step's keys and values into spare room of the KV cache's buffers instead of
    copying the whole cache per step as Transformers' dynamic cache does: the same tokens, a
    faster decode (`steerlight.model.growing`; greedy row-refill decoding)."""
    compile: bool = False
    """Decode greedily with one ``torch.compile``'d step on a static KV cache, steering in the
    graph (`steerlight.model.compiled`; for GPUs, where eager decode is launch-bound). Tokens
    equal the plain path's in the tests, but logits may differ in the last bits: not speed-only."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """The output of `generate`."""

    tokens: Tensor
    """(B, T_new) new token ids; rows that finished early are filled with the pad id."""
    texts: list[str]
    """Decoded new tokens (special tokens skipped), each cut at the first stop string."""

    def lengths(self, pad_id: int) -> Tensor:
        """(B,) generated tokens per row: those that are not the `pad_id` filling ended rows."""
        return (self.tokens != pad_id).sum(1)


def split_rows(
    input_ids: Tensor, attention_mask: Tensor, size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive groups of `size` rows of a left-padded batch, each without the columns that
    all of its rows pad (so a group is what collating those rows alone gives)."""
    for i in range(0, len(input_ids), max(1, size)):
        ids, mask = input_ids[i : i + size], attention_mask[i : i + size]
        start = int((mask.shape[1] - mask.sum(1)).min())
        yield ids[:, start:], mask[:, start:]


def cat_generations(parts: Sequence[Generation], pad_id: int) -> Generation:
    """One `Generation` (or subclass) of the rows of `parts`, in order; (B, T) tensors are
    padded to the widest part: token ids with `pad_id`, floats (DAC's strengths) with NaN."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.tokens.shape[1] for p in parts)
    fields: dict[str, Any] = {"texts": [t for p in parts for t in p.texts]}
    for f in dataclasses.fields(parts[0]):
        if f.name != "texts":
            values = [getattr(p, f.name) for p in parts]
            fill = float("nan") if values[0].is_floating_point() else pad_id
            fields[f.name] = torch.cat(
                [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill) for v in values]
            )
    return type(parts[0])(**fields)


def in_batches(
    fn: Callable[[Tensor, Tensor], Generation],
    input_ids: Tensor,
    attention_mask: Tensor,
    size: int | None,
    pad_id: int,
    on_finish: Callable[[int], None] | None = None,
) -> Generation:
    """`fn` (a left-padded batch -> its `Generation`) run on groups of `size` rows at a time;
    `on_finish(rows)` after each group."""
    whole = size is None or size >= len(input_ids)
    groups = [(input_ids, attention_mask)] if whole else split_rows(input_ids, attention_mask, size)
    parts = []
    for ids, mask in groups:
        parts.append(fn(ids, mask))
        if on_finish is not None:
            on_finish(len(ids))
    return cat_generations(parts, pad_id)


def collect(
    rows: Sequence[list[int]],
    pad_id: int,
    tokenizer: PreTrainedTokenizerBase,
    stop_strings: Sequence[Stop],
    device: torch.device,
) -> Generation:
    """The `Generation` of each row's new token ids, padded like `generate`'s (the pad id
    after a row ends) and decoded, each text cut at its first stop."""
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    if stop_strings:
        texts = [cut_at_stop(t, stop_strings) for t in texts]
    return Generation(tokens=tokens, texts=texts)


def check_left_padded(input_ids: Tensor, attention_mask: Tensor) -> None:
    """Raise unless the prompts are a (B, T) batch whose rows all end in a real token."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            "input_ids and attention_mask must both be (batch, length); got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the batch must be left-padded (a row ends in padding)")


def _generation_config(
    settings: GenerationSettings, pad_id: int, eos_ids: list[int], stop_strings: Sequence[Stop]
) -> GenerationConfig:
    defaults = GenerationConfig._get_default_generation_params()
    sampling = (
        {
            "do_sample": True,
            "temperature": float(settings.temperature),
            "top_p": float(settings.top_p),
            "top_k": 0,  # the global default top_k=50 would otherwise truncate silently
        }
        if settings.do_sample
        else {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": defaults["top_k"]}
    )
    return GenerationConfig(
        max_new_tokens=int(settings.max_new_tokens),
        num_beams=1,
        num_return_sequences=1,
        use_cache=True,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        min_length=0,
        length_penalty=1.0,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        stop_strings=[s for s in stop_strings if isinstance(s, str)] or None,
        return_dict_in_generate=False,
        **sampling,
    )


CACHE_NAMES = ("cache", "past_key_values", "state", "mems", "past_buckets_states")
"""Forward arguments (and output fields) that carry a model's cache, across architectures."""


def cache_argument(model: nn.Module) -> str | None:
    """The name under which the model's forward takes a cache (None: it takes none)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in CACHE_NAMES if name in params), None)


def output_cache(output: Any) -> Any:
    """The cache a forward returned; None for models that keep none (``openai-gpt``) or keep
    their state inside their own modules (``recurrent_gemma``)."""
    return next((c for c in (getattr(output, n, None) for n in CACHE_NAMES) if c is not None), None)


def reorderable(cache: Any) -> bool:
    """Whether ``cache.reorder_cache`` moves every bit of its state: Transformers' own
    `DynamicCache` made of its own dynamic layer kinds (attention, sliding-window, state-space
    and hybrid) or of `GrowingLayer`s. A model's own cache class or layer kind (``minimax``,
    ``deepseek_v4``) may keep state that a reorder misses."""
    from transformers import cache_utils

    from steerlight.model.growing import GrowingLayer

    return type(cache) is cache_utils.DynamicCache and all(
        type(layer) is GrowingLayer
        or (
            type(layer).__module__ == cache_utils.__name__
            and not isinstance(layer, cache_utils.StaticLayer)
        )
        for layer in cache.layers
    )


def repeat_cache_rows(cache: Any, index: Tensor) -> Any | None:
    """A copy of `cache` holding its rows `index` (e.g. each row twice), or None where the cache
    is not `reorderable` (callers then recompute the rows)."""
    if not reorderable(cache):
        return None
    copied = copy.deepcopy(cache)
    copied.reorder_cache(index)
    return copied


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Position ids from a 2D mask, as ``generate`` makes them (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class ChunkForward:
    """Forwards of the last columns of a sequence with exactly the inputs ``generate`` would
    pass: ``model.prepare_inputs_for_generation`` builds them (the inputs sliced to the new
    columns, position ids from the left-padded mask, a model's own rules such as Mamba dropping
    the mask on decode steps), and the mask is passed only when a row is padded (``generate``
    drops an all-ones one). Only the last position's logits are computed where the model allows.

    The first forward tells whether the model returns a cache; from then on a model that does
    not (``openai-gpt``, ``recurrent_gemma``) is run without one and callers feed it every
    column each time (`cacheless`), which is said once in the log.
    """

    def __init__(self, model: nn.Module, padded: bool, call: Callable | None = None) -> None:
        params = inspect.signature(model.forward).parameters
        self.model = model
        self.call = model if call is None else call  # (a compiled forward: `compiled`)
        self.padded = padded
        self.position_ids = "position_ids" in params
        self.logits_to_keep = "logits_to_keep" in params
        self.cache_name = cache_argument(model)
        self.use_cache = "use_cache" in params
        self.cacheless = self.cache_name is None

    def __call__(self, ids: Tensor, mask: Tensor, cache: Any, new: int) -> tuple[Tensor, Any]:
        """Next-token logits (R, V) after feeding the last `new` columns of `ids` (R, N), and the
        cache now holding every column. `cache` holds the other columns (None: `new` is N)."""
        kwargs: dict[str, Any] = {"is_first_iteration": cache is None}
        if cache is not None:
            kwargs[self.cache_name] = cache
            kwargs["next_sequence_length"] = new
        if self.use_cache:
            kwargs["use_cache"] = not self.cacheless
        if self.padded:
            kwargs["attention_mask"] = mask
        if self.position_ids:
            kwargs["position_ids"] = position_ids_from_mask(mask)
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.call(**self.model.prepare_inputs_for_generation(ids, **kwargs), return_dict=True)
        cache = None if self.cacheless else output_cache(out)
        if cache is None and not self.cacheless:
            self.cacheless = True
            name = getattr(self.model.config, "model_type", type(self.model).__name__)
            log.info("%s returns no cache: every step recomputes the whole sequence", name)
        return out.logits[:, -1].float(), cache


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings | None = None,
    stop_strings: Sequence[Stop] = (),
) -> Generation:
    """Generate completions for a left-padded batch.

    Args:
        model: a causal LM with ``generate`` (steering hooks may be active).
        tokenizer: used for pad/EOS ids, stop-string matching and decoding.
        input_ids: (B, T) left-padded prompt ids.
        attention_mask: (B, T), 0 on pads.
        settings: decoding settings (default `GenerationSettings()`).
        stop_strings: a row stops once its text contains one of them; texts are cut there.
    """
    settings = settings or GenerationSettings()
    patterns = [s for s in stop_strings if isinstance(s, re.Pattern)]
    check_left_padded(input_ids, attention_mask)
    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(model, tokenizer)
    config = _generation_config(settings, pad_id, eos_ids, stop_strings)
    device = input_ids.device
    fork_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []

    own_config = getattr(model, "generation_config", None)
    with torch.random.fork_rng(devices=fork_devices, enabled=settings.do_sample):
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        try:
            # Nothing from the model's generation_config fills gaps in ours (see module doc).
            model.generation_config = GenerationConfig()
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                tokenizer=tokenizer if config.stop_strings else None,
                stopping_criteria=StoppingCriteriaList(
                    [PatternStop(tokenizer, patterns, input_ids.shape[1])] if patterns else []
                ),
            )
        finally:
            model.generation_config = own_config
    tokens = out[:, input_ids.shape[1] :]
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    if stop_strings:
        texts = [cut_at_stop(t, stop_strings) for t in texts]
    return Generation(tokens=tokens, texts=texts)

"""DAC (Scalena, Sarti, Nissim 2024, "Dynamic Activation Composition"): a per-step, per-row alpha.

The method
----------
A steering vector ``v`` is added after decoder layer ``L`` as in CAA, but its strength is
chosen anew at every generation step ``t`` and for every row:

- ``p_t``: the unsteered next-token distribution,
- ``q_t``: the next-token distribution when steered at ``alpha_max``,
- ``U``: the union of the top-``top_p`` nuclei of ``p_t`` and ``q_t`` (a nucleus is the smallest
  set of most likely tokens holding at least ``top_p`` of the mass, never empty),
- ``alpha_t = clip(KL(p_t || q_t) on U, 0, alpha_max)``, with both distributions renormalised
  on ``U`` (``batchmean=True`` divides the KL by ``|U|`` as the reference code's
  ``F.kl_div(..., reduction="batchmean")`` on a 1-D input does),
- the token is taken (greedy or sampled) from the model steered at ``alpha_t``.

Every steered column keeps the strength (and, with per-step vectors, the vector) of the step
that fed it: the column that predicts token ``t`` (the last prompt token for ``t = 0``,
generated token ``t-1`` afterwards) is steered by ``alpha_t * v_t`` in the applied stream and by
``alpha_max * v_t`` in the probe stream, for as long as the sequence goes on. This is the
reference implementation's rule (``layer_act[prompt_len - 1 + i] += alpha_used[i] * v[i]``
for every ``i <= step`` at every step) and what makes a KV cache exact. (Re-steering the whole
past at the new ``alpha_t``, as one full forward with a single strength would, cannot be cached
at all.) With ``positions="generated"`` nothing is steered at step 0, so ``alpha_0 = 0``.

The 3-cache scheme
------------------
The naive method runs three full forward passes per token with no cache: O(T^2). Here three KV
caches are kept, one per stream, and each step feeds every stream one token:

1. ``pq`` cache, 2B rows interleaved (row 0 unsteered, row 0 probe, row 1 unsteered, ...): one
   batched forward with the per-row strength ``[0, alpha_max, 0, alpha_max, ...]`` gives
   ``p_t`` and ``q_t``;
2. ``alpha_t`` from them (`dac_alpha`);
3. applied cache, B rows: one forward of the same token with strength ``alpha_t`` gives the
   logits the token is drawn from.

Steps 1 and 3 cannot share one forward: the applied logits at step ``t`` need ``alpha_t``, which
needs ``p_t, q_t`` of the same token, and the next token of the ``pq`` streams needs the applied
logits. So each step is one 2B-row forward then one B-row forward (3B rows of work in all), and
the total work is O(T), as for plain cached generation.

Prefill. The prompt columns before the last one are never steered (positions
``"generated"`` / ``"prompt_end+generated"``), so all three streams share them: one B-row
forward over ``prompt[:, :-1]`` builds a cache that the applied stream continues and the ``pq``
streams get each row of twice; step 0 then feeds the last prompt column like any other token.
With ``positions="all"`` every prompt column is steered, so the ``pq`` streams prefill the whole
prompt (2B rows) and the applied stream prefills it at ``alpha_0`` once that is known.

Caches. No cache type's own methods are relied on: every stream keeps its columns (ids, mask,
strength and vector step of each), so it can always recompute them. The rows are doubled by
``reorder_cache`` on a deep copy where the cache is Transformers' own `DynamicCache` of its own
layer kinds (attention, sliding-window, state-space and hybrid layers alike,
`steerlight.model.generation.repeat_cache_rows`); with any other cache the ``pq`` streams
recompute the shared prefix in their first forward. A model that returns no cache
(``openai-gpt``; ``recurrent_gemma`` keeps its state in its own modules) is run without one:
every forward recomputes the whole sequence (O(T^2), said once in the log). A row that ends
(greedy decoding) leaves all three streams by the same reorder, so no step decodes it again; a
cache that cannot reorder keeps it, its tokens discarded.

Exactness. Each cached forward computes the same function as the naive full forward at its
last position: the cached keys/values of every column were computed with the same steering
(strength and vector) the naive pass applies to that column, position ids come from the
attention mask as in ``generate`` (left padding), and pads are masked and never steered. With
``alpha_max = 0`` the three streams are the unsteered model and the tokens equal
`steerlight.model.generation.generate` (greedy, and sampling with the same seed).

Per-step vectors. DAC's own vector source is the in-context prompt minus the zero-shot
prompt, read position by position along a continuation (`steerlight.steering.icl`); ``v_t`` for
``t < T`` and their mean over the rest for every later step.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from steerlight.model.columns import Columns
from steerlight.model.generation import (
    ChunkForward,
    Generation,
    GenerationSettings,
    StopMatcher,
    check_left_padded,
    cut_at_stop,
    pad_token_id,
    reorderable,
    repeat_cache_rows,
    stop_token_ids,
)
from steerlight.model.growing import grow_in_place
from steerlight.steering.dac_strength import clip_alpha, dac_kl
from steerlight.steering.hooks import POSITIONS, Positions, Strength, steer_with

DACVectors = Literal["caa", "icl"]

log = logging.getLogger(__name__)


@functools.cache
def _say_not_compiled() -> None:
    log.info("DAC decodes its own three streams eagerly: model.generation.compile does not apply")


@dataclass
class DACSettings:
    """DAC (Dynamic Activation Composition): how the per-token strength is chosen."""

    alpha_max: float = 2.0
    """The probe strength and the clip of alpha_t; 0 is the unsteered model."""
    top_p: float = 0.9
    """Nucleus mass of each distribution; the KL is taken on the union U of the two nuclei."""
    batchmean: bool = False
    """Divide the KL by |U|, as the authors' code does (`F.kl_div(..., "batchmean")`). Off by
    default, which departs from the paper: alpha_t here is |U| times larger, so strengths that
    work here are much larger than the paper's."""
    vectors: DACVectors = "caa"
    """`caa`: the CAA vector; `icl`: DAC's own per-step vectors, in-context prompt minus
    zero-shot prompt (needs `data.n_shots` > 0)."""
    steps: int = 8
    """With `icl` vectors: one vector for each of the first N generated tokens, then their mean."""
    icl_examples: int = 64
    """With `icl` vectors: the train examples they are averaged over."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha_max):
            raise ValueError(f"alpha_max must be a finite number, got {self.alpha_max}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.steps < 0 or self.icl_examples < 1:
            raise ValueError("steps must be >= 0 and icl_examples >= 1")


# ---- generation -----------------------------------------------------------------------------


@dataclass
class DACGeneration(Generation):
    """`Generation` plus the strength DAC chose at every step."""

    alphas: Tensor
    """(B, T_new) float32 on the CPU: alpha_t per row and step; NaN once a row has finished."""
    kls: Tensor
    """(B, T_new) float32 on the CPU: the KL on U before clipping; NaN once a row has finished."""

    def step_stats(self) -> dict[str, Tensor]:
        """Per-step ``mean`` / ``min`` / ``max`` of alpha_t over the rows still generating.

        Each is a (T_new,) tensor (every step has at least one live row).
        """
        live = ~self.alphas.isnan()
        inf = torch.tensor(float("inf"))
        return {
            "mean": self.alphas.nanmean(0),
            "min": torch.where(live, self.alphas, inf).amin(0),
            "max": torch.where(live, self.alphas, -inf).amax(0),
        }


class _Stream:
    """Rows fed the same way at every step (the applied rows, or the p/q rows), with every
    column they hold: ids, mask, strength and vector step. The cache, where the model keeps
    one, holds the first `cached` columns; the next forward feeds the rest.

    `strength` is the loop's own `Strength`, which the steering hook reads: each feed sets it
    to the strengths and vectors of the columns it runs. `columns` is the model's `Columns`
    (told how many columns a copied cache holds)."""

    def __init__(
        self,
        forward: ChunkForward,
        strength: Strength,
        columns: Columns,
        table: Tensor,
        ids: Tensor,
        mask: Tensor,
    ) -> None:
        self.forward, self.strength, self.columns, self.table = forward, strength, columns, table
        self.ids, self.mask = ids, mask
        self.alphas = torch.zeros(ids.shape, device=ids.device)
        self.steps = torch.zeros(ids.shape[1], dtype=torch.long, device=table.device)
        self.cache: Any = None
        self.cached = 0
        self.grow = False  # the cache's layers written in place (`grow_in_place`)

    def feed(self, ids: Tensor, mask: Tensor, alpha: Tensor, step: int) -> Tensor:
        """Append the chunk `ids` (R, T) steered at `alpha` (R,) with step `step`'s vector;
        the next-token logits (R, V)."""
        t = ids.shape[1]
        self.ids = torch.cat([self.ids, ids], dim=1)
        self.mask = torch.cat([self.mask, mask], dim=1)
        self.alphas = torch.cat([self.alphas, alpha[:, None].expand(-1, t)], dim=1)
        self.steps = torch.cat([self.steps, self.steps.new_full((t,), step)])
        start = 0 if self.forward.cacheless else self.cached
        self.strength.alpha = self.alphas[:, start:]  # each column keeps its step's steering
        self.strength.vector = self.table[self.steps[start:].clamp(max=len(self.table) - 1)]
        logits, self.cache = self.forward(
            self.ids, self.mask, self.cache, self.ids.shape[1] - start
        )
        self.cached = self.ids.shape[1] if self.cache is not None else 0
        if self.grow and self.cache is not None:
            grow_in_place(self.cache)
        return logits

    def repeated(self, times: int) -> _Stream:
        """A stream holding each row `times` times, in order (row 0, row 0, row 1, ...)."""
        rows = torch.arange(self.ids.shape[0], device=self.ids.device).repeat_interleave(times)
        twin = _Stream(
            self.forward, self.strength, self.columns, self.table, self.ids[rows], self.mask[rows]
        )
        twin.alphas, twin.steps, twin.grow = self.alphas[rows], self.steps, self.grow
        cache = None if self.cache is None else repeat_cache_rows(self.cache, rows)
        if cache is not None:  # else its first forward recomputes every column it holds
            twin.cache, twin.cached = cache, self.cached
            self.columns.track(cache, self.cached)
        return twin


def _drop_finished(streams: tuple[_Stream, _Stream], unfinished: Tensor) -> Tensor | None:
    """Remove finished rows from the applied and the p/q streams (whose row i is rows 2i and
    2i+1). Returns the rows kept, or None where a cache cannot drop rows exactly (a model's own
    cache class: its finished rows go on being decoded, their tokens discarded)."""
    applied, pq = streams
    if not all(s.cache is None or reorderable(s.cache) for s in streams):
        return None
    keep = unfinished.nonzero().squeeze(1)
    for stream, rows in ((applied, keep), (pq, torch.stack([2 * keep, 2 * keep + 1], 1).view(-1))):
        if stream.cache is not None:
            stream.cache.reorder_cache(rows)
        stream.ids, stream.mask, stream.alphas = (
            stream.ids[rows],
            stream.mask[rows],
            stream.alphas[rows],
        )
    return keep


def _vector_table(vector: Tensor | None, step_vectors: Tensor | None) -> Tensor:
    """(S, H): the vector of step t is row ``min(t, S - 1)``."""
    if (vector is None) == (step_vectors is None):
        raise ValueError("pass exactly one of `vector` (H,) and `step_vectors` (T + 1, H)")
    table = vector[None] if step_vectors is None else step_vectors
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(
            "the steering vector must be (H,) and step_vectors (T + 1, H), got "
            f"{tuple((vector if step_vectors is None else step_vectors).shape)}"
        )
    return table.detach()


@torch.no_grad()
def dac_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    layer: int,
    vector: Tensor | None,
    settings: GenerationSettings | None = None,
    stop_strings: Sequence[str] = (),
    *,
    top_p: float = 0.9,
    alpha_max: float = 2.0,
    batchmean: bool = False,
    positions: Positions = "prompt_end+generated",
    step_vectors: Tensor | None = None,
) -> DACGeneration:
    """Generate a left-padded batch with DAC steering (three KV caches, see the module doc).

    Args:
        model: the causal LM (frozen, eval mode).
        tokenizer: pad/EOS ids, stop-string matching and decoding.
        input_ids: (B, P) left-padded prompt ids; attention_mask: (B, P), 0 on pads.
        layer: decoder layer whose output is steered (negative counts from the end).
        vector: (H,) steering vector, or None when `step_vectors` is given.
        settings: decoding (greedy by default; sampling draws from the applied distribution).
        stop_strings: a row stops once its text contains one; texts are cut there.
        top_p: DAC's nucleus mass for U (not the sampling `settings.top_p`).
        alpha_max: the probe strength and the clip of alpha_t.
        batchmean: divide the KL by ``|U|``.
        positions: which positions are steered (see `steerlight.steering.hooks`).
        step_vectors: (S, H) per-step vectors, row ``min(t, S - 1)`` at step t (`icl_step_vectors`).
    """
    settings = settings or GenerationSettings()
    check_left_padded(input_ids, attention_mask)
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    vectors = _vector_table(vector, step_vectors)

    batch, prompt_len = input_ids.shape
    device = input_ids.device
    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(model, tokenizer)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    warpers: list[Any] = []
    generator = None
    if settings.do_sample:
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        generator = torch.Generator(device=device).manual_seed(settings.seed)

    pq_alpha = torch.tensor([0.0, float(alpha_max)], device=device).repeat(batch)
    live = torch.arange(batch, device=device)  # the rows still in the streams
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # of the live rows
    stopped = StopMatcher(tokenizer, stop_strings)
    rows: list[list[int]] = [[] for _ in range(batch)]
    tokens: list[Tensor] = []
    alphas: list[Tensor] = []
    kls: list[Tensor] = []

    strength = Strength(vectors[0], 0.0)  # the loop's: set by each stream's feed
    with steer_with(model, layer, strength, positions, prompt_len) as steering:
        forward = ChunkForward(model, padded=not bool(attention_mask.all()))
        empty = (input_ids[:, :0], attention_mask[:, :0])
        applied = _Stream(forward, strength, steering.columns, vectors, *empty)
        applied.grow = settings.cache_in_place
        if settings.compile:
            _say_not_compiled()
        fed, fed_mask = input_ids, attention_mask
        if positions != "all" and prompt_len > 1:  # unsteered columns: shared by the streams
            applied.feed(input_ids[:, :-1], attention_mask[:, :-1], pq_alpha.new_zeros(batch), 0)
            fed, fed_mask = input_ids[:, -1:], attention_mask[:, -1:]
        pq = applied.repeated(2)

        for t in range(settings.max_new_tokens):
            n = len(live)
            logits_pq = pq.feed(
                fed.repeat_interleave(2, dim=0),
                fed_mask.repeat_interleave(2, dim=0),
                pq_alpha[: 2 * n],
                t,
            )
            p_logits, q_logits = logits_pq.view(n, 2, -1).unbind(1)
            kl = dac_kl(p_logits, q_logits, top_p, batchmean)
            alpha = clip_alpha(kl, alpha_max)

            logits = applied.feed(fed, fed_mask, alpha, t)
            for warp in warpers:
                logits = warp(None, logits)
            if generator is not None:
                probs = logits.softmax(-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_id))

            nan = torch.full((batch,), float("nan"), device=device)
            tokens.append(torch.full((batch,), pad_id, device=device).index_put((live,), nxt))
            alphas.append(nan.index_put((live,), torch.where(unfinished, alpha, nan[:n])))
            kls.append(nan.index_put((live,), torch.where(unfinished, kl, nan[:n])))
            unfinished &= ~torch.isin(nxt, eos)
            if stopped.stops:
                for i, (row, tok) in enumerate(zip(live.tolist(), nxt.tolist(), strict=True)):
                    rows[row].append(tok)
                    if unfinished[i] and stopped(rows[row]):
                        unfinished[i] = False
            if not bool(unfinished.any()):
                break
            fed, fed_mask = nxt[:, None], fed_mask.new_ones(n, 1)
            # A finished row is not decoded again (sampling keeps every row: the draws of the
            # others would change); each row's tokens are the same either way.
            if generator is None and not bool(unfinished.all()):
                keep = _drop_finished((applied, pq), unfinished)
                if keep is not None:
                    live, unfinished, fed, fed_mask = (
                        live[keep],
                        unfinished[keep],
                        fed[keep],
                        fed_mask[keep],
                    )

    out = torch.stack(tokens, dim=1)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    if stop_strings:
        texts = [cut_at_stop(text, stop_strings) for text in texts]
    return DACGeneration(
        tokens=out,
        texts=texts,
        alphas=torch.stack(alphas, dim=1).cpu(),
        kls=torch.stack(kls, dim=1).cpu(),
    )

"""Part ``dac``: DAC generation (three KV caches) vs CAA generation, same length. Target <= 2x.

Also timed in the same rounds: the model's forwards alone for B and for 2B rows (`forwards`).
A DAC step is one forward of each and a CAA step one of B rows, so their ratio is the floor of
DAC's cost without sharing work between its streams.

With ``--naive-dac-repeats N`` DAC is also timed by its definition (`naive_dac`: three full
forwards per token, no cache, O(T^2)), and its tokens are compared with steerlight's.
"""

from __future__ import annotations

import argparse

import torch
from common import Result, add_after_layer
from generation import CAA, Contender, GenerationBatch, ms_per_token
from torch import Tensor, nn

DAC = "steerlight DAC (3 KV caches)"
NAIVE = "DAC by definition (3 full forwards/token)"
ROWS_B = "cached decoding forwards, B rows"
ROWS_2B = "cached decoding forwards, 2B rows"


@torch.no_grad()
def naive_dac(
    model: nn.Module, ids: Tensor, mask: Tensor, layer: int, vector: Tensor, steps: int, **dac
) -> Tensor:
    """DAC by definition: three full forwards over the whole sequence per token, no cache."""
    from steerlight.model.layers import decoder_layers
    from steerlight.steering.dac_strength import dac_alpha

    def last_logits(ids: Tensor, mask: Tensor, scale: Tensor | None) -> Tensor:
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if scale is None:
            return model(**kwargs, use_cache=False).logits[:, -1].float()

        def add(h: Tensor) -> Tensor:  # each column its own strength; pads none
            return (scale * mask)[..., None].to(h) * vector.to(h)

        with add_after_layer(decoder_layers(model)[layer], add):
            return model(**kwargs, use_cache=False).logits[:, -1].float()

    n, prompt_len = ids.shape
    history = torch.zeros(n, 0, device=ids.device)
    out = []
    for t in range(steps):
        cols = torch.arange(ids.shape[1], device=ids.device)
        step_of = (cols - (prompt_len - 1)).clamp(min=0, max=t)
        steered = (cols >= prompt_len - 1).float()[None].expand(n, -1)
        p = last_logits(ids, mask, None)
        q = last_logits(ids, mask, dac["alpha_max"] * steered)
        alpha = dac_alpha(p, q, dac["top_p"], dac["alpha_max"])
        history = torch.cat([history, alpha[:, None].to(history)], dim=1)
        nxt = last_logits(ids, mask, history[:, step_of] * steered)
        out.append(nxt.argmax(-1))
        ids = torch.cat([ids, out[-1][:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, dim=1)


def forwards(model: nn.Module, ids: Tensor, mask: Tensor, steps: int) -> Tensor:
    """The model's forwards alone, as a decoding loop makes them: a prefill, then `steps` - 1
    single-token steps on the cache (no steering, no sampling logic)."""
    from steerlight.model.generation import ChunkForward

    forward = ChunkForward(model, padded=True)
    logits, cache = forward(ids, mask, None, ids.shape[1])
    for _ in range(steps - 1):
        nxt = logits.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        logits, cache = forward(ids, mask, cache, 1)
    return torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)[:, -steps:]


def dac_contenders(gen: GenerationBatch, repeats: int, naive_repeats: int) -> dict[str, Contender]:
    """steerlight's DAC; the forwards of B and of 2B rows alone (a DAC step is one of each, a
    CAA step one of B rows: their sum over B rows is DAC's floor); DAC by definition when
    `naive_repeats` > 0 (never warmed up: slow)."""
    from steerlight.steering.dac import dac_generate

    model, ids, mask, layer, vector = gen.model, gen.ids, gen.mask, gen.layer, gen.vector
    fixed, settings, dac, n = gen.fixed, gen.settings, gen.dac, gen.n

    def dac_fast() -> Tensor:
        return dac_generate(model, fixed, ids, mask, layer, vector, settings, **dac).tokens

    twice = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    contenders = {
        DAC: Contender(dac_fast, repeats),
        ROWS_B: Contender(lambda: forwards(model, ids, mask, n), repeats),
        ROWS_2B: Contender(lambda: forwards(model, *twice, n)[::2], repeats),
    }
    if naive_repeats > 0:
        contenders[NAIVE] = Contender(
            lambda: naive_dac(model, ids, mask, layer, vector, n, **dac),
            naive_repeats,
            warmup=lambda: None,
        )
    return contenders


def dac_result(
    args: argparse.Namespace,
    gen: GenerationBatch,
    times: dict[str, list[float]],
    outputs: dict[str, Tensor],
    med: dict[str, float],
) -> Result:
    """The DAC-vs-CAA ratio at equal length (and DAC by definition's, when it ran)."""
    ratio = med[DAC] / med[CAA]
    details = dict(gen.setup)
    # DAC's three streams cost one forward of 2B rows and one of B rows per token, CAA one of
    # B rows: below this, only sharing work between the streams would go
    details["forward_floor"] = (med[ROWS_2B] + med[ROWS_B]) / med[ROWS_B]
    details["dac_over_its_forwards"] = med[DAC] / (med[ROWS_2B] + med[ROWS_B])
    measured_naive = ""
    if NAIVE in med:
        details["naive_dac_over_dac"] = med[NAIVE] / med[DAC]
        details["naive_dac_tokens_equal"] = bool(torch.equal(outputs[NAIVE], outputs[DAC]))
        same = "same" if details["naive_dac_tokens_equal"] else "DIFFERENT"
        measured_naive = (
            f"; DAC by definition {details['naive_dac_over_dac']:.1f}x slower, {same} tokens"
        )
    return Result(
        "dac_vs_caa",
        "DAC vs CAA generation at equal length",
        ratio,
        "steerlight DAC time / steerlight CAA time",
        "<= 2x",
        ratio <= 2.0,
        f"{ms_per_token(med[DAC], gen.n)} vs {ms_per_token(med[CAA], gen.n)} per step, "
        f"batch {args.batch}; forwards of 2B + B rows / B rows alone: "
        f"{details['forward_floor']:.2f}x{measured_naive}",
        {k: v for k, v in times.items() if "CAA" in k or "DAC" in k or "forwards" in k},
        details,
    )

"""Part ``dac``: DAC generation (three KV caches) vs CAA generation, same length. Target <= 3x.

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


def dac_contenders(gen: GenerationBatch, repeats: int, naive_repeats: int) -> dict[str, Contender]:
    """steerlight's DAC, and DAC by definition when `naive_repeats` > 0 (never warmed up: slow)."""
    from steerlight.steering.dac import dac_generate

    model, ids, mask, layer, vector = gen.model, gen.ids, gen.mask, gen.layer, gen.vector
    fixed, settings, dac, n = gen.fixed, gen.settings, gen.dac, gen.n

    def dac_fast() -> Tensor:
        return dac_generate(model, fixed, ids, mask, layer, vector, settings, **dac).tokens

    contenders = {DAC: Contender(dac_fast, repeats)}
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
        "<= 3x (CPU)",
        ratio <= 3.0,
        f"{ms_per_token(med[DAC], gen.n)} vs {ms_per_token(med[CAA], gen.n)} per step, "
        f"batch {args.batch}{measured_naive}",
        {k: v for k, v in times.items() if "CAA" in k or "DAC" in k},
        details,
    )

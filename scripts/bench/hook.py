"""Part ``hook``: steerlight's CAA generation (`steer` + `generate`) vs plain ``model.generate``.

Same batch, same fixed length, greedy. Target <= 1.05x. Two side ratios split the cost: the
wrapper alone (steerlight's `generate` without hooks vs Transformers') and the hooks alone.
"""

from __future__ import annotations

import argparse

import torch
from common import Result
from generation import CAA, Contender, GenerationBatch, ms_per_token
from torch import Tensor

PLAIN = "plain model.generate"
UNSTEERED = "steerlight generate, no hook"


def hook_contenders(gen: GenerationBatch, repeats: int) -> dict[str, Contender]:
    """Plain ``model.generate`` and steerlight's `generate` without steering (CAA is shared)."""
    from transformers import GenerationConfig

    from steerlight.model.generation import generate

    model, fixed, ids, mask, settings = gen.model, gen.fixed, gen.ids, gen.mask, gen.settings
    plain_config = GenerationConfig(
        max_new_tokens=gen.n,
        do_sample=False,
        num_beams=1,
        pad_token_id=gen.tokenizer.pad_token_id,
        eos_token_id=[gen.fixed.eos_token_id],  # never emitted: fixed length, as on our side
    )

    def plain() -> Tensor:
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=plain_config)[
            :, ids.shape[1] :
        ]

    def unsteered() -> Tensor:
        return generate(model, fixed, ids, mask, settings).tokens

    return {PLAIN: Contender(plain, repeats), UNSTEERED: Contender(unsteered, repeats)}


def hook_result(
    args: argparse.Namespace,
    gen: GenerationBatch,
    times: dict[str, list[float]],
    outputs: dict[str, Tensor],
    med: dict[str, float],
) -> Result:
    """The hook-overhead ratio: CAA time over plain ``model.generate`` time."""
    # Same kernels, same greedy decoding: steerlight's wrapper must not change a token.
    assert torch.equal(outputs[PLAIN], outputs[UNSTEERED])
    ratio = med[CAA] / med[PLAIN]
    return Result(
        "hook_overhead",
        "Hook overhead: CAA generation vs plain model.generate",
        ratio,
        "steerlight CAA time / plain model.generate time",
        "<= 1.05x",
        ratio <= 1.05,
        f"{ms_per_token(med[CAA], gen.n)} vs {ms_per_token(med[PLAIN], gen.n)} per step, "
        f"batch {args.batch}",
        {k: v for k, v in times.items() if "DAC" not in k},
        {
            **gen.setup,
            # steerlight's generate without hooks vs HF's (the wrapper alone)
            "wrapper_ratio": med[UNSTEERED] / med[PLAIN],
            # the hooks alone: the same steerlight generate with and without `steer`
            "hook_only_ratio": med[CAA] / med[UNSTEERED],
        },
    )

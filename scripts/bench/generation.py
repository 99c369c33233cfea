"""The batch that parts hook and dac both generate, and CAA, the reference of both ratios.

The two parts time their contenders in ONE set of interleaved rounds (`bench_generation` in
``__main__``): CAA is timed once, under the same load as every method it is compared with.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from bench_models import FixedLengthTokenizer, RandomBench, left_padded, steering_vector
from common import median, n_params, timed_rounds
from torch import Tensor, nn

CAA = "steerlight CAA (steer + generate)"


@dataclass
class Contender:
    """A timed generation method: its call, timed repeats and optional untimed warm-up."""

    fn: Callable[[], Tensor]
    repeats: int
    warmup: Callable[[], Any] | None = None


@dataclass
class GenerationBatch:
    """One left-padded batch of questions and how every method generates it."""

    model: nn.Module
    tokenizer: Any
    """The question tokenizer (its pad id); `fixed` is the one the methods generate with."""
    fixed: FixedLengthTokenizer
    ids: Tensor
    mask: Tensor
    layer: int
    vector: Tensor
    dac: dict[str, float]
    settings: Any
    """`steerlight.model.generation.GenerationSettings` of every steerlight method."""
    caa: Callable[[], Tensor]
    """The shared contender `CAA`: steer at ``dac["alpha_max"]`` + steerlight's generate."""
    setup: dict[str, Any]
    """The details both results report."""

    @property
    def n(self) -> int:
        """New tokens per row (fixed: the model cannot emit the EOS id)."""
        return self.settings.max_new_tokens


def generation_batch(
    args: argparse.Namespace, device: torch.device, bench: RandomBench
) -> GenerationBatch:
    """The first ``--batch`` test questions, a steering vector at the middle layer, and CAA."""
    from steerlight.model.generation import GenerationSettings, generate
    from steerlight.steering.hooks import steer

    model, tok = bench.model, bench.tokenizer
    prompts = [f"Question: {r['question']}\nAnswer:" for r in bench.rows["test"][: args.batch]]
    ids, mask = left_padded(tok, prompts, device)
    fixed = FixedLengthTokenizer(tok, args.vocab)
    layer = args.layers // 2
    vector = steering_vector(args.hidden, args.seed).to(device)
    dac = {"top_p": 0.9, "alpha_max": 2.0}
    n = args.new_tokens
    settings = GenerationSettings(max_new_tokens=n)

    def caa() -> Tensor:
        with steer(model, layer, vector, dac["alpha_max"], prompt_len=ids.shape[1]):
            return generate(model, fixed, ids, mask, settings).tokens

    setup = {
        "model": f"random Llama, {n_params(model) / 1e6:.1f}M params",
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "batch": args.batch,
        "prompt_tokens": [int(mask.sum(1).min()), int(ids.shape[1])],
        "new_tokens": n,
        "questions": bench.source,
        "steered_layer": layer,
        "alpha": dac["alpha_max"],
        "dac": dac,
        "lm_head_scale": args.lm_head_scale,
    }
    return GenerationBatch(model, tok, fixed, ids, mask, layer, vector, dac, settings, caa, setup)


def timed_generation(
    gen: GenerationBatch, contenders: dict[str, Contender], device: torch.device
) -> tuple[dict[str, list[float]], dict[str, Tensor], dict[str, float]]:
    """Times, last tokens and median times of every contender, interleaved round by round."""
    times, outputs = timed_rounds(
        {name: c.fn for name, c in contenders.items()},
        {name: c.repeats for name, c in contenders.items()},
        device,
        {name: c.warmup for name, c in contenders.items() if c.warmup is not None},
    )
    for name, tokens in outputs.items():
        assert tokens.shape == (gen.setup["batch"], gen.n), (name, tuple(tokens.shape))
    return times, outputs, {k: median(v) for k, v in times.items()}


def ms_per_token(seconds: float, steps: int) -> str:
    """A generation's time per decoding step, for the markdown row."""
    return f"{1000 * seconds / steps:.1f} ms"

"""Part ``activations``: one forward reading every layer vs one forward per layer.

steerlight reads every decoder layer's output in one forward
(`steerlight.steering.activations.read_activations`); the naive way runs one forward per layer.
Target: L times fewer forwards and >= 0.8 L speed-up. Both go through the same layer reader
(`read_layers`) and the same forward (logits at one position): only the count differs.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from bench_models import RandomBench, left_padded
from common import ForwardCounter, Result, median, n_params, timed_rounds
from torch import Tensor, nn


@torch.no_grad()
def activations_per_layer(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, read_mask: Tensor
) -> Tensor:
    """The naive way: one forward per layer, each reading only that layer's output (B, L, H)."""
    from steerlight.model.layers import decoder_layers
    from steerlight.steering.activations import read_layers, skip_logits_kwargs

    weights = read_mask.float() / read_mask.sum(1, keepdim=True).clamp(min=1)

    def masked_mean(hidden: Tensor) -> Tensor:
        return torch.einsum("bth,bt->bh", hidden, weights.to(hidden.device))

    out = []
    for i in range(len(decoder_layers(model))):
        with read_layers(model, [i], masked_mean) as got:
            # The same forward as steerlight's (logits at one position): only the count differs.
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                **skip_logits_kwargs(model),
            )
        out.append(got[i])
    return torch.stack(out, dim=1)


def bench_activations(args: argparse.Namespace, device: torch.device, bench: RandomBench) -> Result:
    """Part 3: all layers in one forward vs one forward per layer, same batches."""
    from steerlight.steering import activations
    from steerlight.steering.activations import read_activations

    model, tok, source = bench.model, bench.tokenizer, bench.source
    texts = [
        f"Question: {r['question']}\nAnswer: {r['answer']}"
        for r in bench.rows["train"][: args.act_texts]
    ]
    batches = [
        left_padded(tok, texts[i : i + args.batch], device)
        for i in range(0, len(texts), args.batch)
    ]

    def one_pass() -> Tensor:
        return torch.cat([read_activations(model, ids, m, m.bool()) for ids, m in batches])

    def per_layer() -> Tensor:
        return torch.cat([activations_per_layer(model, ids, m, m.bool()) for ids, m in batches])

    def one_pass_all_logits() -> Tensor:
        # steerlight before the benchmark: the LM head ran over every position of the pass
        with mock.patch.object(activations, "skip_logits_kwargs", lambda _model: {}):
            return one_pass()

    contenders = {"one forward, all layers": one_pass, "one forward per layer": per_layer}
    contenders["one forward, all layers, logits everywhere"] = one_pass_all_logits
    times, outputs = timed_rounds(contenders, dict.fromkeys(contenders, args.act_repeats), device)
    a, b = outputs["one forward, all layers"], outputs["one forward per layer"]
    assert a.shape == b.shape == (len(texts), args.layers, args.hidden)
    max_diff = float((a - b).abs().max())
    forwards = {}
    for name, fn in list(contenders.items())[:2]:
        with ForwardCounter(model) as counter:
            fn()
        forwards[name] = counter.count
    speedup = median(times["one forward per layer"]) / median(times["one forward, all layers"])
    n_layers = args.layers
    return Result(
        "activation_extraction",
        "Activation extraction: one pass for all layers vs one pass per layer",
        speedup,
        "one-pass-per-layer time / one-pass time",
        f">= 0.8 L = {0.8 * n_layers:.1f}x (L = {n_layers}), L x fewer forwards",
        speedup >= 0.8 * n_layers
        and forwards["one forward per layer"] == n_layers * forwards["one forward, all layers"],
        f"{forwards['one forward, all layers']} vs {forwards['one forward per layer']} forwards "
        f"for {len(texts)} texts",
        times,
        {
            "model": f"random Llama, {n_params(model) / 1e6:.1f}M params",
            "layers": n_layers,
            "texts": len(texts),
            "batch": args.batch,
            "tokens": int(sum(int(m.sum()) for _, m in batches)),
            "questions": source,
            "forwards": forwards,
            "forward_ratio": forwards["one forward per layer"]
            / max(1, forwards["one forward, all layers"]),
            "speedup_over_layers": speedup / n_layers,
            "logits_everywhere_over_one_pass": median(
                times["one forward, all layers, logits everywhere"]
            )
            / median(times["one forward, all layers"]),
            "max_abs_difference": max_diff,
        },
    )

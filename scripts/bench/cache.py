"""Part ``cache``: plain generation with Transformers' default (dynamic) cache, which
steerlight's `generate` uses, vs ``cache_implementation="static"``, on both bench models.
(Commit 63242ac's version also timed steerlight's former in-place `PreallocatedLayer`, which
lost on these short prompts and was removed; the refill loop's `GrowingLayer` came back for
long ones, measured by parts ``real`` and ``curves``.)

Same prompts, same `GenerationConfig` (steerlight's), greedy; every cache must give the same
tokens. Reported ratio: the dynamic cache's time over the fastest other (<= 1.05: keep it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from bench_models import FixedLengthTokenizer, RandomBench, data_config, left_padded
from common import Result, median, n_params, timed_rounds
from torch import Tensor, nn

CACHES = ("Transformers dynamic", "Transformers static")


def cache_contenders(
    model: nn.Module, tokenizer: Any, ids: Tensor, mask: Tensor, new_tokens: int
) -> dict[str, Callable[[], Tensor]]:
    """One plain ``model.generate`` per cache kind, with steerlight's generation config."""
    from transformers import GenerationConfig

    from steerlight.model import generation as g

    eos = g.stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = g._generation_config(g.GenerationSettings(max_new_tokens=new_tokens), pad, eos, ())

    def run(implementation: str | None) -> Tensor:
        own = model.generation_config
        model.generation_config = GenerationConfig()
        try:
            cfg = GenerationConfig(**{**config.to_dict(), "cache_implementation": implementation})
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        finally:
            model.generation_config = own
        return out[:, ids.shape[1] :]

    return {CACHES[0]: lambda: run(None), CACHES[1]: lambda: run("static")}


def _time(
    contenders: dict[str, Callable[[], Tensor]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    times, outputs = timed_rounds(contenders, dict.fromkeys(contenders, repeats), device)
    first = next(iter(outputs.values()))
    for name, tokens in outputs.items():  # a cache must not change a token
        assert torch.equal(tokens, first), name
    return times, {k: median(v) for k, v in times.items()}


def bench_cache(
    args: argparse.Namespace, device: torch.device, bench: RandomBench, tiny: str
) -> Result:
    """Part cache: the three caches on the random bench model and on the trained tiny model."""
    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.model.loading import load_model, load_tokenizer

    prompts = [f"Question: {r['question']}\nAnswer:" for r in bench.rows["test"][: args.batch]]
    ids, mask = left_padded(bench.tokenizer, prompts, device)
    fixed = FixedLengthTokenizer(bench.tokenizer, args.vocab)
    random_contenders = cache_contenders(bench.model, fixed, ids, mask, args.new_tokens)
    random_times, random_med = _time(random_contenders, args.repeats, device)

    model = load_model(tiny, dtype=args.dtype).to(device)
    tok = load_tokenizer(tiny)
    dm = GSM8KDataModule(tokenizer=tok, **data_config(args, args.trial_batch, args.trial_batch))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    t_ids, t_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    tiny_contenders = cache_contenders(model, tok, t_ids, t_mask, args.search_max_new_tokens)
    tiny_times, tiny_med = _time(tiny_contenders, args.repeats, device)

    def ratio(med: dict[str, float]) -> float:
        return med[CACHES[0]] / med[CACHES[1]]

    ratios = {"random": ratio(random_med), "tiny": ratio(tiny_med)}
    worst = max(ratios.values())

    def line(med: dict[str, float]) -> str:
        return " / ".join(f"{med[c]:.2f}" for c in CACHES if c in med) + " s"

    return Result(
        "cache",
        "KV cache: Transformers' dynamic (used) vs static",
        worst,
        "dynamic cache time / static cache time (worse of the two models)",
        "<= 1.05x",
        worst <= 1.05,
        f"random: {line(random_med)}; tiny: {line(tiny_med)} "
        f"({' / '.join(c.split()[-1] for c in CACHES if c in random_med)})",
        {
            **{f"random {k}": v for k, v in random_times.items()},
            **{f"tiny {k}": v for k, v in tiny_times.items()},
        },
        {
            "random_model": f"random Llama, {n_params(bench.model) / 1e6:.1f}M params",
            "random_batch": args.batch,
            "random_new_tokens": args.new_tokens,
            "tiny_model": f"{tiny}, {n_params(model) / 1e6:.2f}M params",
            "tiny_batch": int(t_ids.shape[0]),
            "tiny_max_new_tokens": args.search_max_new_tokens,
            "ratios": ratios,
        },
    )

"""Wall time of DAC generation (3 KV caches) vs CAA generation vs the naive no-cache DAC.

All three run on the same left-padded batch of the same random Llama, greedy, with a fixed
number of new tokens (random weights never stop: EOS is an id the model cannot emit and there
are no stop strings). Each method is warmed up once, then timed `--repeats` times; the table
reports medians and the ratios measured in this run.

    python scripts/bench_dac.py            # 58.5M-parameter Llama, batch 8, 64 new tokens
    python scripts/bench_dac.py --quick    # smoke run: tiny model, a few tokens
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from steerlight.model.generation import GenerationSettings, generate
from steerlight.model.hooks import steer
from steerlight.model.layers import decoder_layers
from steerlight.steering.dac import dac_alpha, dac_generate


class _IdTokenizer:
    """Just enough of a tokenizer for fixed-length generation: ids are printed, never parsed."""

    pad_token_id = 0

    def __init__(self, vocab_size: int) -> None:
        self.eos_token_id = vocab_size  # outside the vocabulary: generation never stops early

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(str(int(i)) for i in ids)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r) for r in rows]


def build_model(quick: bool) -> LlamaForCausalLM:
    size = (
        {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
        if quick
        else {
            "vocab_size": 32000,
            "hidden_size": 512,
            "intermediate_size": 1408,
            "num_hidden_layers": 8,
        }
    )
    config = LlamaConfig(
        **size,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    model.generation_config.eos_token_id = None
    return model


def make_batch(vocab: int, batch: int, min_len: int, max_len: int) -> tuple[Tensor, Tensor]:
    """Random prompts of different lengths, left-padded."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.linspace(min_len, max_len, batch).round().long()
    ids = torch.zeros(batch, max_len, dtype=torch.long)
    mask = torch.zeros(batch, max_len, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, max_len - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, max_len - n :] = 1
    return ids, mask


def _last_logits(
    model: nn.Module, ids: Tensor, mask: Tensor, scale: Tensor | None, vector: Tensor, layer: int
) -> Tensor:
    """Next-token logits of one full forward (no cache); `scale` (B, S) steers per column."""
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    if scale is None:
        return model(**kwargs, use_cache=False).logits[:, -1].float()

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + (scale * mask)[..., None] * vector
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        return model(**kwargs, use_cache=False).logits[:, -1].float()
    finally:
        handle.remove()


@torch.no_grad()
def naive_dac(
    model: nn.Module, ids: Tensor, mask: Tensor, layer: int, vector: Tensor, steps: int, **dac
) -> Tensor:
    """DAC by definition: three full forwards over the whole sequence per token, no cache.

    Column c >= P - 1 is steered at alpha_max in the probe pass and, in the applied pass, at the
    strength chosen at the step that first fed it (``positions="prompt_end+generated"``).
    """
    n, prompt_len = ids.shape
    history = torch.zeros(n, 0)
    out = []
    for t in range(steps):
        cols = torch.arange(ids.shape[1])
        step_of = (cols - (prompt_len - 1)).clamp(min=0, max=t)
        steered = (cols >= prompt_len - 1).float()[None].expand(n, -1)
        p = _last_logits(model, ids, mask, None, vector, layer)
        q = _last_logits(model, ids, mask, dac["alpha_max"] * steered, vector, layer)
        alpha = dac_alpha(p, q, dac["top_p"], dac["alpha_max"])
        history = torch.cat([history, alpha[:, None]], dim=1)
        nxt = _last_logits(model, ids, mask, history[:, step_of] * steered, vector, layer)
        out.append(nxt.argmax(-1))
        ids = torch.cat([ids, out[-1][:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, dim=1)


def timed_rounds(
    methods: dict[str, tuple[Callable[[int], Tensor], int]], steps: int
) -> dict[str, tuple[float, Tensor]]:
    """Median wall time and output of each method (called with `steps` new tokens). After a short
    warm-up, repeats are interleaved round by round so that a change in machine load hits every
    method alike."""
    for fn, _ in methods.values():
        fn(2)
    outputs: dict[str, Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(max(reps for _, reps in methods.values())):
        for name, (fn, reps) in methods.items():
            if r < reps:
                start = time.perf_counter()
                outputs[name] = fn(steps)
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens (smoke run)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--naive-repeats",
        type=int,
        default=1,
        help="the naive reference is O(T^2), ~3 min a run; 0 skips it",
    )
    parser.add_argument(
        "--lm-head-scale",
        type=float,
        default=1.0,
        help="scale the random lm_head (e.g. 15) for peaked next-token distributions like a "
        "trained model's; random weights give nearly flat ones (DAC's worst case: full sorts)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core box more threads spin-wait)",
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.new_tokens = min(args.batch, 4), min(args.new_tokens, 6)
        args.naive_repeats = args.repeats
    torch.set_num_threads(args.threads)

    model = build_model(args.quick)
    with torch.no_grad():
        model.lm_head.weight.mul_(args.lm_head_scale)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    n_params = sum(p.numel() for p in model.parameters())
    ids, mask = make_batch(vocab, args.batch, *((8, 16) if args.quick else (40, 64)))
    tok = _IdTokenizer(vocab)
    layer = model.config.num_hidden_layers // 2
    torch.manual_seed(2)
    vector = torch.randn(hidden)
    vector = vector / vector.norm() * 4.0
    dac = {"top_p": 0.9, "alpha_max": 2.0}

    def plain(steps: int) -> Tensor:
        return generate(model, tok, ids, mask, GenerationSettings(max_new_tokens=steps)).tokens

    def caa(steps: int) -> Tensor:
        with steer(model, layer, vector, dac["alpha_max"], prompt_len=ids.shape[1]):
            return plain(steps)

    def fast(steps: int) -> Tensor:
        settings = GenerationSettings(max_new_tokens=steps)
        return dac_generate(model, tok, ids, mask, layer, vector, settings, **dac).tokens

    def naive(steps: int) -> Tensor:
        return naive_dac(model, ids, mask, layer, vector, steps, **dac)

    methods = {
        "unsteered generate": (plain, args.repeats),
        "CAA (generate + steer)": (caa, args.repeats),
        "DAC, 3 KV caches": (fast, args.repeats),
        "DAC, naive (3 full forwards)": (naive, args.naive_repeats),
    }
    if args.naive_repeats < 1:
        del methods["DAC, naive (3 full forwards)"]
    results = timed_rounds(methods, args.new_tokens)
    for name, (_, tokens) in results.items():
        assert tokens.shape == (args.batch, args.new_tokens), name

    caa_s = results["CAA (generate + steer)"][0]
    dac_s, dac_tokens = results["DAC, 3 KV caches"]
    print(
        f"\nrandom Llama, {n_params / 1e6:.1f}M params (hidden {hidden}, "
        f"{model.config.num_hidden_layers} layers, vocab {vocab}); batch {args.batch}, "
        f"prompts {int(mask.sum(1).min())}-{ids.shape[1]} tokens (left-padded), "
        f"{args.new_tokens} new tokens, greedy; {torch.get_num_threads()} threads; "
        f"lm_head x{args.lm_head_scale:g}; median of {args.repeats} (naive: {args.naive_repeats})\n"
    )
    print("| method | median s | ms / token | vs CAA |")
    print("|---|---:|---:|---:|")
    for name, (secs, _) in results.items():
        per_token = 1000 * secs / args.new_tokens
        print(f"| {name} | {secs:.3f} | {per_token:.1f} | {secs / caa_s:.2f}x |")
    print(f"\nDAC / CAA = {dac_s / caa_s:.2f}x", end="")
    if "DAC, naive (3 full forwards)" in results:
        naive_s, naive_tokens = results["DAC, naive (3 full forwards)"]
        same = "yes" if torch.equal(dac_tokens, naive_tokens) else "NO"
        print(f"; naive / DAC = {naive_s / dac_s:.1f}x; DAC tokens equal the naive ones: {same}")
    else:
        print()


if __name__ == "__main__":
    main()

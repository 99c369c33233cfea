"""steerlight's benchmark suite: every figure is a ratio of two runs timed side by side.

Each benchmark runs its two (or more) contenders in the same process, on the same questions,
with interleaved repeats (round 1: A, B; round 2: A, B; ...) so that a change in machine load
hits both alike, and reports medians.

1. ``hook``: steerlight's CAA generation (`steer` + `generate`) vs plain ``model.generate``,
   same batch, fixed length. Target <= 1.05x.
2. ``trial``: one search trial of steerlight (a `fit` whose activations and vectors are cached:
   batched, length-sorted, stop strings) vs the naive loop of the original pipeline, written
   here (batch size 1, no stop strings, 256 new tokens, contrastive activations recomputed for
   every trial), on a trained model that stops by itself (the embedded ``tiny``). Target >= 10x.
3. ``activations``: one forward reading every layer (`steerlight.steering.activations`) vs one forward
   per layer. Target: L times fewer forwards and >= 0.8 L speed-up.
4. ``dac``: DAC generation (three KV caches) vs CAA generation, same length. Target <= 3x on CPU.
5. ``pruning``: a 20-trial `steerlight.search` with the median pruner vs ``--pruner none``,
   counting generated tokens. Target >= 35% fewer tokens, best val accuracy within one question.

Parts 1, 3 and 4 use a random-weight Llama (default about 58M parameters; ``--hidden``,
``--layers`` scale it up on a GPU). Random weights never stop on their own, so their
generation has a fixed length: the end-of-sequence id is one the model cannot emit.

    python scripts/bench.py --out bench.json            # everything (about 10-15 min, 2-core CPU)
    python scripts/bench.py --quick --out /tmp/q.json   # smoke run: tiny models, seconds
    python scripts/bench.py --parts hook,dac --device cuda --dtype bfloat16 --hidden 2048

Results go to ``--out`` (JSON) and a markdown table next to it (``.md``), and to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

PARTS = ("hook", "trial", "activations", "dac", "pruning")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger("bench")


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python scripts/bench.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--quick", action="store_true", help="smoke run: tiny models, few tokens and trials")
    add("--out", type=Path, default=None, help="write the results as JSON here (and FILE.md)")
    add("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    add("--repeats", type=int, default=5, help="timed repeats per contender (median reported)")
    add("--threads", type=int, default=1, help="torch intra-op threads (1: steady on a busy box)")
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add("--dtype", choices=sorted(DTYPES), default="float32", help="weights dtype")
    add("--seed", type=int, default=0, help="seed of weights, vectors and sampled questions")
    g = p.add_argument_group("questions")
    g.add_argument(
        "--source",
        choices=("auto", "gsm8k", "synthetic"),
        default="auto",
        help="questions for parts hook/activations/dac: real GSM8K rows from --gsm8k-dir, the "
        "synthetic generator, or auto (GSM8K when the folder exists)",
    )
    g.add_argument(
        "--gsm8k-dir",
        type=Path,
        default=Path(
            os.environ.get("STEERLIGHT_GSM8K_DIR", ROOT.parent / "shared" / "data" / "gsm8k")
        ),
        help="folder with GSM8K train.jsonl/test.jsonl (env STEERLIGHT_GSM8K_DIR)",
    )
    g = p.add_argument_group("random model (parts hook, activations, dac)")
    g.add_argument("--hidden", type=int, default=512, help="hidden size")
    g.add_argument("--layers", type=int, default=8, help="decoder layers")
    g.add_argument("--heads", type=int, default=8, help="attention heads")
    g.add_argument("--vocab", type=int, default=32000, help="model vocabulary (Llama's 32000)")
    g.add_argument("--batch", type=int, default=8, help="prompts per generation batch")
    g.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    g.add_argument("--act-texts", type=int, default=16, help="question+solution texts read")
    g.add_argument(
        "--act-repeats", type=int, default=3, help="timed repeats of the extraction (slow part)"
    )
    g.add_argument(
        "--lm-head-scale",
        type=float,
        default=1.0,
        help="scale the random lm_head (e.g. 15) for peaked next-token distributions like a "
        "trained model's; random weights give nearly flat ones (DAC's worst case: full sorts)",
    )
    g.add_argument(
        "--naive-dac-repeats",
        type=int,
        default=0,
        help="also time DAC by definition (three full forwards per token, O(T^2), minutes)",
    )
    g = p.add_argument_group("trained tiny model (parts trial, pruning)")
    g.add_argument(
        "--tiny-path",
        default=None,
        help="a folder with a trained model and tokenizer (default: the embedded `tiny`, "
        "built on first use; --quick: a tiny random model)",
    )
    g.add_argument(
        "--tiny-source",
        default="synthetic",
        help="data source for the tiny model (it was trained on the synthetic format)",
    )
    g.add_argument("--val", type=int, default=120, help="val questions of a trial")
    g.add_argument("--train", type=int, default=256, help="train rows (contrastive pairs)")
    g.add_argument("--trial-batch", type=int, default=40, help="steerlight's val batch size")
    g.add_argument(
        "--max-new-tokens", type=int, default=256, help="generation limit of both pipelines"
    )
    g.add_argument("--alpha", type=float, default=0.5, help="CAA strength of the timed trial")
    g.add_argument(
        "--naive-repeats", type=int, default=2, help="timed repeats of the naive trial (slow)"
    )
    g.add_argument("--trials", type=int, default=20, help="trials of each pruning search")
    g.add_argument("--rounds", type=int, default=4, help="val shards (pruning rounds) per trial")
    g.add_argument("--search-val", type=int, default=120, help="val questions of the search")
    g.add_argument(
        "--search-max-new-tokens", type=int, default=96, help="generation limit in the search"
    )
    return p


QUICK = {
    "repeats": 2,
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "vocab": 1000,
    "batch": 4,
    "new_tokens": 6,
    "act_texts": 8,
    "act_repeats": 2,
    "val": 6,
    "train": 4,
    "trial_batch": 3,
    "max_new_tokens": 12,
    "naive_repeats": 1,
    "trials": 3,
    "rounds": 2,
    "search_val": 6,
    "search_max_new_tokens": 6,
}
"""What --quick changes (each field only where it would be larger)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        build_parser().error(f"unknown --parts {sorted(unknown)}; choose from {PARTS}")
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, min(getattr(args, name), value))
    return args


# -- timing ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    contenders: dict[str, Callable[[], Any]],
    repeats: dict[str, int],
    device: torch.device,
    warmup: dict[str, Callable[[], Any]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall times (s) and last outputs of each contender, repeats interleaved round by round.

    Every contender runs once untimed first (or its `warmup` callable), so one-off costs
    (kernel selection, lazy imports, allocator growth) land in no timed run.
    """
    warmup = warmup or {}
    for name, fn in contenders.items():
        warmup.get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, Any] = {}
    for r in range(max(repeats.values())):
        for name, fn in contenders.items():
            if r < repeats[name]:
                _sync(device)
                start = time.perf_counter()
                outputs[name] = fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return times, outputs


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


@dataclass
class Result:
    """One benchmark: a ratio, its target and the measurements behind it."""

    name: str
    title: str
    ratio: float
    ratio_of: str
    target: str
    met: bool
    measured: str
    """One line for the markdown table: what the two sides took."""
    times_s: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "ratio": self.ratio,
            "ratio_of": self.ratio_of,
            "target": self.target,
            "target_met": self.met,
            "measured": self.measured,
            "median_s": {k: median(v) for k, v in self.times_s.items() if v},
            "times_s": self.times_s,
            "details": self.details,
        }


# -- questions, tokenizers and models ------------------------------------------------------------


@dataclass
class RandomBench:
    """What parts hook, activations and dac share: questions, a tokenizer, a random model."""

    source: str
    rows: dict[str, list[dict[str, str]]]
    tokenizer: Any
    model: nn.Module


def random_bench(args: argparse.Namespace, device: torch.device) -> RandomBench:
    """Real GSM8K rows (or synthetic ones), a BPE trained on them and a random Llama."""
    from steerlight.data.sources import load_rows

    use_gsm8k = args.source == "gsm8k" or (
        args.source == "auto" and (args.gsm8k_dir / "train.jsonl").is_file()
    )
    if use_gsm8k:
        source, rows = f"GSM8K ({args.gsm8k_dir})", load_rows(str(args.gsm8k_dir))
    else:
        source, rows = "synthetic", load_rows("synthetic", synthetic_sizes=(400, 100), seed=1234)
    # A real tokenizer's vocabulary is much larger; this one only has to give GSM8K-like lengths.
    tok = question_tokenizer(rows["train"][: 200 if args.quick else 2000], min(4096, args.vocab))
    return RandomBench(source, rows, tok, random_llama(args, device))


class FixedLengthTokenizer:
    """A tokenizer whose end-of-sequence id lies outside the model's vocabulary.

    Random weights stop at random: with an EOS the model cannot emit, every row generates
    exactly ``max_new_tokens``, so two methods do equal work. Everything else is delegated.
    """

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = vocab_size
        self.pad_token_id = tokenizer.pad_token_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def question_tokenizer(rows: list[dict[str, str]], vocab: int):
    """A byte-level BPE trained on the rows (no tokenizer can be downloaded here)."""
    from steerlight.tokenizer import build_tokenizer

    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    return build_tokenizer(texts, vocab_size=vocab)


def random_llama(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """A random-weight Llama that never emits its end-of-sequence id (see FixedLengthTokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75 // 64 * 64) or 4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.lm_head.weight.mul_(args.lm_head_scale)
    model.generation_config.eos_token_id = None
    return model.to(device=device, dtype=DTYPES[args.dtype])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def left_padded(tokenizer: Any, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def steering_vector(hidden: int, seed: int, norm: float = 4.0) -> Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    v = torch.randn(hidden, generator=g)
    return v / v.norm() * norm


# -- parts 1 and 4: generation ---------------------------------------------------------------


@torch.no_grad()
def naive_dac(
    model: nn.Module, ids: Tensor, mask: Tensor, layer: int, vector: Tensor, steps: int, **dac
) -> Tensor:
    """DAC by definition: three full forwards over the whole sequence per token, no cache."""
    from steerlight.model.layers import decoder_layers
    from steerlight.steering.dac import dac_alpha

    def last_logits(ids: Tensor, mask: Tensor, scale: Tensor | None) -> Tensor:
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if scale is None:
            return model(**kwargs, use_cache=False).logits[:, -1].float()

        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + (scale * mask)[..., None].to(h) * vector.to(h)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = decoder_layers(model)[layer].register_forward_hook(hook)
        try:
            return model(**kwargs, use_cache=False).logits[:, -1].float()
        finally:
            handle.remove()

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


def bench_generation(
    args: argparse.Namespace, device: torch.device, bench: RandomBench
) -> list[Result]:
    """Parts 1 (hook overhead) and 4 (DAC vs CAA): one batch, every method, interleaved."""
    from transformers import GenerationConfig

    from steerlight.model.generation import GenerationSettings, generate
    from steerlight.steering.hooks import steer
    from steerlight.steering.dac import dac_generate

    model, tok, source = bench.model, bench.tokenizer, bench.source
    prompts = [f"Question: {r['question']}\nAnswer:" for r in bench.rows["test"][: args.batch]]
    ids, mask = left_padded(tok, prompts, device)
    fixed = FixedLengthTokenizer(tok, args.vocab)
    layer = args.layers // 2
    vector = steering_vector(args.hidden, args.seed).to(device)
    dac = {"top_p": 0.9, "alpha_max": 2.0}
    n = args.new_tokens
    settings = GenerationSettings(max_new_tokens=n)
    plain_config = GenerationConfig(
        max_new_tokens=n,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=[args.vocab],  # never emitted: fixed length, as on the steerlight side
    )

    def plain() -> Tensor:
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=plain_config)[
            :, ids.shape[1] :
        ]

    def unsteered() -> Tensor:
        return generate(model, fixed, ids, mask, settings).tokens

    def caa() -> Tensor:
        with steer(model, layer, vector, dac["alpha_max"], prompt_len=ids.shape[1]):
            return generate(model, fixed, ids, mask, settings).tokens

    def dac_fast() -> Tensor:
        return dac_generate(model, fixed, ids, mask, layer, vector, settings, **dac).tokens

    contenders: dict[str, Callable[[], Tensor]] = {}
    if "hook" in args.parts:
        contenders["plain model.generate"] = plain
        contenders["steerlight generate, no hook"] = unsteered
    contenders["steerlight CAA (steer + generate)"] = caa
    if "dac" in args.parts:
        contenders["steerlight DAC (3 KV caches)"] = dac_fast
    repeats = dict.fromkeys(contenders, args.repeats)
    if "dac" in args.parts and args.naive_dac_repeats > 0:
        contenders["DAC by definition (3 full forwards/token)"] = lambda: naive_dac(
            model, ids, mask, layer, vector, n, **dac
        )
        repeats["DAC by definition (3 full forwards/token)"] = args.naive_dac_repeats
    warmup = {"DAC by definition (3 full forwards/token)": lambda: None}
    times, outputs = timed_rounds(contenders, repeats, device, warmup)
    for name, tokens in outputs.items():
        assert tokens.shape == (args.batch, n), (name, tuple(tokens.shape))
    if "plain model.generate" in outputs:
        # Same kernels, same greedy decoding: steerlight's wrapper must not change a token.
        assert torch.equal(outputs["plain model.generate"], outputs["steerlight generate, no hook"])

    setup = {
        "model": f"random Llama, {n_params(model) / 1e6:.1f}M params",
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "batch": args.batch,
        "prompt_tokens": [int(mask.sum(1).min()), int(ids.shape[1])],
        "new_tokens": n,
        "questions": source,
        "steered_layer": layer,
        "alpha": dac["alpha_max"],
        "dac": dac,
        "lm_head_scale": args.lm_head_scale,
    }
    med = {k: median(v) for k, v in times.items()}
    results = []
    if "hook" in args.parts:
        ratio = med["steerlight CAA (steer + generate)"] / med["plain model.generate"]
        results.append(
            Result(
                "hook_overhead",
                "Hook overhead: CAA generation vs plain model.generate",
                ratio,
                "steerlight CAA time / plain model.generate time",
                "<= 1.05x",
                ratio <= 1.05,
                f"{_ms_per_token(med['steerlight CAA (steer + generate)'], n)} vs "
                f"{_ms_per_token(med['plain model.generate'], n)} per step, batch {args.batch}",
                {k: v for k, v in times.items() if "DAC" not in k},
                {
                    **setup,
                    # steerlight's generate without hooks vs HF's (wrapper, in-place KV cache)
                    "wrapper_ratio": med["steerlight generate, no hook"]
                    / med["plain model.generate"],
                    # the hooks alone: the same steerlight generate with and without `steer`
                    "hook_only_ratio": med["steerlight CAA (steer + generate)"]
                    / med["steerlight generate, no hook"],
                },
            )
        )
    if "dac" in args.parts:
        ratio = med["steerlight DAC (3 KV caches)"] / med["steerlight CAA (steer + generate)"]
        details = dict(setup)
        naive = "DAC by definition (3 full forwards/token)"
        measured_naive = ""
        if naive in med:
            details["naive_dac_over_dac"] = med[naive] / med["steerlight DAC (3 KV caches)"]
            details["naive_dac_tokens_equal"] = bool(
                torch.equal(outputs[naive], outputs["steerlight DAC (3 KV caches)"])
            )
            same = "same" if details["naive_dac_tokens_equal"] else "DIFFERENT"
            measured_naive = (
                f"; DAC by definition {details['naive_dac_over_dac']:.1f}x slower, {same} tokens"
            )
        results.append(
            Result(
                "dac_vs_caa",
                "DAC vs CAA generation at equal length",
                ratio,
                "steerlight DAC time / steerlight CAA time",
                "<= 3x (CPU)",
                ratio <= 3.0,
                f"{_ms_per_token(med['steerlight DAC (3 KV caches)'], n)} vs "
                f"{_ms_per_token(med['steerlight CAA (steer + generate)'], n)} per step, "
                f"batch {args.batch}{measured_naive}",
                {k: v for k, v in times.items() if "CAA" in k or "DAC" in k},
                details,
            )
        )
    return results


def _ms_per_token(seconds: float, steps: int) -> str:
    return f"{1000 * seconds / steps:.1f} ms"


# -- part 3: activation extraction -------------------------------------------------------------


class ForwardCounter:
    """Counts the model's forward calls inside a ``with`` block."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.count = model, 0

    def __enter__(self) -> ForwardCounter:
        self.count = 0
        self._handle = self.model.register_forward_pre_hook(self._tick)
        return self

    def _tick(self, *_: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


@torch.no_grad()
def activations_per_layer(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, read_mask: Tensor
) -> Tensor:
    """The naive way: one forward per layer, each reading only that layer's output (B, L, H)."""
    from steerlight.steering.activations import skip_logits_kwargs
    from steerlight.model.layers import decoder_layers

    layers = decoder_layers(model)
    weights = read_mask.float() / read_mask.sum(1, keepdim=True).clamp(min=1)
    out = []
    for layer in layers:
        seen: list[Tensor] = []

        def hook(_module, _args, output, seen=seen):
            hidden = output[0] if isinstance(output, tuple) else output
            seen.append(torch.einsum("bth,bt->bh", hidden.float(), weights.to(hidden.device)))

        handle = layer.register_forward_hook(hook)
        try:
            # The same forward as steerlight's (logits at one position): only the count differs.
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                **skip_logits_kwargs(model),
            )
        finally:
            handle.remove()
        out.append(seen[0])
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


# -- part 2: one trial, steerlight vs the naive loop -----------------------------------------


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-run banners (GPU available, model summary) add nothing to a benchmark."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    """Run the block in `folder` (contextlib.chdir needs Python 3.11)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def trial_config(args: argparse.Namespace, tiny: str, cache_dir: Path, layer: int) -> dict:
    """A `fit` config like one search trial's: CAA at `args.alpha` on `layer`, all of val."""
    return {
        "seed_everything": args.seed,
        "trainer": {
            "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
            "devices": 1,
            "max_epochs": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        "model": {
            "model_name_or_path": tiny,
            "dtype": args.dtype,
            "method": "caa",
            "layer": layer,
            "alpha": args.alpha,
            "positions": "all",
            "normalization": "mean_norm",
            "pairs": "corrupted",
            "read_position": "mean",
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "cache_dir": str(cache_dir),
            "log_samples": 0,
        },
        "data": data_config(args, args.val, args.trial_batch),
    }


def data_config(args: argparse.Namespace, n_val: int, batch: int) -> dict:
    return {
        "source": args.tiny_source,
        "preset": "gsm8k",
        "n_shots": 0,
        # The default hold-out of 500 is what the tiny model never saw in training; limit_val
        # takes its first questions.
        "val_size": max(n_val, 500),
        "limit_val": n_val,
        "limit_train": args.train,
        "batch_size": batch,
        "split_seed": 1234,
    }


@dataclass
class NaiveOutcome:
    correct: int
    tokens: int
    forwards: int


class NaivePipeline:
    """The original pipeline's trial, reimplemented: no batching, no cache, no stop strings.

    Every trial re-reads the contrastive activations (one forward per text, batch size 1,
    all hidden states), takes the CAA vector at the trial's layer, then generates each val
    question alone for up to `max_new_tokens` tokens (only EOS ends a row early) with a plain
    forward hook adding ``alpha * v`` at every position. Completions are cut at the preset's
    stop string afterwards, only for scoring.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, dm: Any, max_new_tokens: int) -> None:
        self.model, self.tok, self.dm = model, tokenizer, dm
        self.max_new_tokens = max_new_tokens
        self.device = next(model.parameters()).device

    def _ids(self, text: str) -> Tensor:
        return self.tok(text, return_tensors="pt")["input_ids"].to(self.device)

    @torch.no_grad()
    def vector(self, layer: int, seed: int) -> Tensor:
        """The CAA vector (mean_norm scaled) from train pairs, recomputed from scratch."""
        from steerlight.steering.caa import corrupt_solution

        preset = self.dm.preset
        acts: dict[bool, list[Tensor]] = {True: [], False: []}
        for ex in self.dm.splits["train"]:
            bad = corrupt_solution(ex["answer"], random.Random(f"{seed}:{ex['id']}"))
            n_prompt = self._ids(ex["prompt"]).shape[1]
            for good, answer in ((True, ex["answer"]), (False, bad)):
                ids = self._ids(ex["prompt"] + preset.continuation(answer))
                out = self.model(input_ids=ids, output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[layer + 1][0].float()  # the block's output
                acts[good].append(hidden[min(n_prompt, ids.shape[1] - 1) :].mean(0))
        pos, neg = torch.stack(acts[True]), torch.stack(acts[False])
        v = pos.mean(0) - neg.mean(0)
        mean_norm = torch.cat([pos, neg]).norm(dim=-1).mean()
        return v / v.norm().clamp(min=1e-12) * mean_norm

    @torch.no_grad()
    def trial(self, layer: int, alpha: float, seed: int) -> NaiveOutcome:
        from steerlight.answers import extract, is_correct
        from steerlight.model.generation import cut_at_stop
        from steerlight.model.layers import decoder_layers

        vector = self.vector(layer, seed)
        add = (alpha * vector).to(next(self.model.parameters()).dtype)

        def hook(_module, _args, output):
            if isinstance(output, tuple):
                return (output[0] + add, *output[1:])
            return output + add

        correct = tokens = forwards = 0
        handle = decoder_layers(self.model)[layer].register_forward_hook(hook)
        try:
            with ForwardCounter(self.model) as counter:
                for ex in self.dm.splits["val"]:
                    ids = self._ids(ex["prompt"])
                    out = self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=self.tok.pad_token_id,
                        eos_token_id=self.tok.eos_token_id,
                    )
                    new = out[0, ids.shape[1] :]
                    tokens += int(new.numel())
                    text = cut_at_stop(
                        self.tok.decode(new, skip_special_tokens=True), self.dm.preset.stop
                    )
                    pred = extract(text, "strict", self.dm.preset.answer_form)
                    correct += int(is_correct(pred, ex["gold"]))
            forwards = counter.count
        finally:
            handle.remove()
        return NaiveOutcome(correct, tokens, forwards)


@contextlib.contextmanager
def timed_method(obj: Any, name: str) -> Iterator[list[float]]:
    """Sum the wall time of ``obj.name(...)`` calls in the block into the yielded [seconds]."""
    spent = [0.0]
    method = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(obj, name, wrapper)
    try:
        yield spent
    finally:
        delattr(obj, name)  # the class's method again


def resolve_tiny(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """(path, description) of the trained model for parts trial and pruning."""
    if args.tiny_path:
        return str(args.tiny_path), f"model at {args.tiny_path}"
    if args.quick:
        path = workdir / "tiny-random"
        save_tiny_random(path, args.seed)
        return str(path), "tiny random Llama (--quick; it rarely stops)"
    from steerlight.tiny import tiny_model_path

    return str(tiny_model_path()), "the embedded tiny model (steerlight.tiny)"


def save_tiny_random(path: Path, seed: int) -> None:
    """A 2-layer random Llama and a BPE tokenizer, saved like a Hub model (for --quick)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlight.data.synthetic import synthetic_splits

    rows = synthetic_splits(n_train=60, n_test=4, seed=1234)["train"]
    tok = question_tokenizer(rows, vocab=384)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def bench_trial(args: argparse.Namespace, device: torch.device, tiny: str, what: str) -> Result:
    """Part 2: one search trial through steerlight vs the naive loop, same questions."""
    from steerlight.cli import cli_main
    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.model.loading import load_model, load_tokenizer, reuse_loaded_models

    workdir = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    try:
        # chdir: Lightning saves each run's config.yaml in the working folder
        with reuse_loaded_models(), quiet_lightning(), working_folder(workdir):
            model = load_model(tiny, dtype=args.dtype).to(device)
            tok = load_tokenizer(tiny)
            layer = model.config.num_hidden_layers // 2
            config = trial_config(args, tiny, workdir / "cache", layer)
            dm = GSM8KDataModule(tokenizer=tok, **config["data"])
            dm.setup()
            naive = NaivePipeline(model, tok, dm, args.max_new_tokens)
            last: dict[str, Any] = {}

            generation_s: list[float] = []

            def steerlight_trial() -> None:
                cli = cli_main(args=json.loads(json.dumps(config)), run=False, checkpoint=False)
                with timed_method(cli.model, "generate_batch") as spent:
                    cli.trainer.fit(cli.model, cli.datamodule)
                generation_s.append(spent[0])
                last["acc"] = float(cli.trainer.callback_metrics["val/acc"])
                last["tokens"] = cli.model.generated_tokens

            def naive_trial() -> NaiveOutcome:
                return naive.trial(layer, args.alpha, args.seed)

            start = time.perf_counter()
            steerlight_trial()  # the first trial reads and caches the activations
            first = time.perf_counter() - start
            times, outputs = timed_rounds(
                {"steerlight trial": steerlight_trial, "naive trial": naive_trial},
                {"steerlight trial": args.repeats, "naive trial": args.naive_repeats},
                device,
                warmup={"steerlight trial": lambda: None, "naive trial": lambda: None},
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    outcome: NaiveOutcome = outputs["naive trial"]
    n_val = len(dm.splits["val"])
    generation = median(generation_s[1:])  # the timed trials (not the first, which fills the cache)
    speedup = median(times["naive trial"]) / median(times["steerlight trial"])
    return Result(
        "trial_cost",
        "Trial cost: steerlight vs the naive pipeline",
        speedup,
        "naive trial time / steerlight trial time",
        ">= 10x",
        speedup >= 10,
        f"{median(times['steerlight trial']):.1f} s vs {median(times['naive trial']):.1f} s "
        f"for {n_val} val questions ({generation:.1f} s of the trial generating)",
        times,
        {
            "model": f"{what}, {n_params(model) / 1e6:.2f}M params",
            "model_path": tiny,
            "questions": f"{args.tiny_source}: {n_val} val, {len(dm.splits['train'])} train pairs",
            "layer": layer,
            "alpha": args.alpha,
            "steerlight_batch": args.trial_batch,
            "max_new_tokens": args.max_new_tokens,
            "first_steerlight_trial_s": first,
            "steerlight_generation_s": generation,
            "steerlight_setup_s": median(times["steerlight trial"]) - generation,
            "naive_over_steerlight_generation": median(times["naive trial"]) / generation,
            "steerlight_val_acc": last["acc"],
            "naive_val_acc": outcome.correct / max(1, n_val),
            "steerlight_generated_tokens": last["tokens"],
            "naive_generated_tokens": outcome.tokens,
            "naive_generate_forwards": outcome.forwards,
            "naive_activation_forwards": 2 * len(dm.splits["train"]),
        },
    )


# -- part 5: pruning ---------------------------------------------------------------------------

SEARCH_SPACE = {
    "method": ["caa", "dac"],
    "layer": {"probe_top_k": 3},
    "positions": ["prompt_end+generated", "all"],
    "when": {
        "caa": {"alpha": {"low": -3.0, "high": 3.0}},
        "dac": {
            "dac_alpha_max": {"low": 0.5, "high": 4.0},
            "dac_top_p": {"low": 0.5, "high": 0.95},
        },
    },
}
"""The space of configs/debug.yaml, fixed here so the benchmark does not move with that file."""


def search_config(args: argparse.Namespace, tiny: str, cache_dir: Path) -> dict:
    return {
        "seed_everything": args.seed,
        "trainer": {
            "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "model_name_or_path": tiny,
            "dtype": args.dtype,
            "method": "caa",
            "layer": "auto",
            "alpha": 0.0,
            "normalization": "mean_norm",
            "max_new_tokens": args.search_max_new_tokens,
            "seed": args.seed,
            "cache_dir": str(cache_dir),
            "log_samples": 0,
        },
        "data": data_config(args, args.search_val, args.trial_batch),
        "search": SEARCH_SPACE,
    }


def run_search(args: argparse.Namespace, tiny: str, workdir: Path, pruner: str) -> dict:
    """One `steerlight.search` study; its generated tokens, best value and wall time."""
    import optuna
    import yaml

    from steerlight.search import run

    folder = workdir / pruner
    folder.mkdir(parents=True)
    config = folder / "study.yaml"
    # Each study its own activation cache: both pay the same one-off fit.
    config.write_text(yaml.safe_dump(search_config(args, tiny, folder / "cache")))
    argv = ["--config", str(config), "--root", str(folder / "logs"), "--study-name", "bench"]
    argv += ["--n-trials", str(args.trials), "--rounds", str(args.rounds), "--pruner", pruner]
    argv += ["--seed", str(args.seed)]
    start = time.perf_counter()
    with quiet_lightning(), working_folder(folder):  # nothing lands in the caller's folder
        study = run(argv)
    wall = time.perf_counter() - start
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "wall_s": wall,
        "generated_tokens": sum(int(t.user_attrs.get("generated_tokens", 0)) for t in study.trials),
        "best_val_acc": max((t.value for t in complete), default=float("nan")),
        "states": {s: states.count(s) for s in sorted(set(states))},
        "tokens_per_trial": [int(t.user_attrs.get("generated_tokens", 0)) for t in study.trials],
    }


def bench_pruning(args: argparse.Namespace, tiny: str, what: str) -> Result:
    """Part 5: the same seeded search with the median pruner and without a pruner."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        pruned = run_search(args, tiny, workdir, "median")
        full = run_search(args, tiny, workdir, "none")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = pruned["generated_tokens"] / max(1, full["generated_tokens"])
    saving = 1 - ratio
    gap_questions = (full["best_val_acc"] - pruned["best_val_acc"]) * args.search_val
    return Result(
        "pruning",
        f"Pruning: a {args.trials}-trial search with and without the median pruner",
        ratio,
        "generated tokens with the pruner / without",
        "<= 0.65 (>= 35% fewer tokens), best val acc within 1 question",
        saving >= 0.35 and gap_questions <= 1 + 1e-9,
        f"{pruned['generated_tokens']} vs {full['generated_tokens']} tokens "
        f"({100 * saving:.0f}% fewer); best val acc {pruned['best_val_acc']:.3f} vs "
        f"{full['best_val_acc']:.3f}",
        {"search, median pruner": [pruned["wall_s"]], "search, no pruner": [full["wall_s"]]},
        {
            "model": what,
            "model_path": tiny,
            "trials": args.trials,
            "rounds": args.rounds,
            "val_questions": args.search_val,
            "max_new_tokens": args.search_max_new_tokens,
            "token_saving": saving,
            "best_val_gap_questions": gap_questions,
            "wall_ratio": pruned["wall_s"] / full["wall_s"],
            "median_pruner": pruned,
            "no_pruner": full,
        },
    )


# -- report ------------------------------------------------------------------------------------


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['device']}, {meta['dtype']}. Command: `{meta['command']}`",
        "",
        "| benchmark | ratio | target | met | measured |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.title} | {r.ratio:.2f}x | {r.target} | {'yes' if r.met else 'NO'} | "
            f"{r.measured} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core {cpu}, {platform.system()}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    meta = {
        "command": "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": args.dtype,
        "quick": args.quick,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    results: list[Result] = []
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if {"hook", "dac", "activations"} & set(args.parts):
            bench = random_bench(args, device)
            if {"hook", "dac"} & set(args.parts):
                _progress("generation: plain, CAA, DAC", started)
                results += bench_generation(args, device, bench)
            if "activations" in args.parts:
                _progress("activation extraction", started)
                results.append(bench_activations(args, device, bench))
        if {"trial", "pruning"} & set(args.parts):
            tiny, what = resolve_tiny(args, workdir)
            if "trial" in args.parts:
                _progress("one trial: steerlight vs naive", started)
                results.append(bench_trial(args, device, tiny, what))
            if "pruning" in args.parts:
                _progress("pruning: two searches", started)
                results.append(bench_pruning(args, tiny, what))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    order = ["hook_overhead", "trial_cost", "activation_extraction", "dac_vs_caa", "pruning"]
    results.sort(key=lambda r: order.index(r.name))
    meta["wall_s"] = time.perf_counter() - started
    report = {"meta": meta, "benchmarks": {r.name: r.as_json() for r in results}}
    for r in results:
        if not (math.isfinite(r.ratio) and r.ratio > 0):
            raise RuntimeError(f"{r.name}: ratio {r.ratio} is not a positive number")
    table = markdown(results, meta)
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return report


def _progress(what: str, started: float) -> None:
    print(f"[bench {time.perf_counter() - started:6.1f}s] {what}", flush=True)


if __name__ == "__main__":
    main()

"""steerlight's benchmark suite: every figure is a ratio of two runs timed side by side.

Each benchmark runs its two (or more) contenders in the same process, on the same questions,
with interleaved repeats (round 1: A, B; round 2: A, B; ...) so that a change in machine load
hits both alike, and reports medians. One module per part, in this folder:

1. ``hook`` (`hook.py`): steerlight's CAA generation (`steer` + `generate`) vs plain
   ``model.generate``, same batch, fixed length. Target <= 1.05x.
2. ``trial`` (`trial.py`): one search trial of steerlight (a `fit` whose activations and vectors
   are cached: batched, length-sorted, stop strings) vs the naive loop of the original pipeline,
   written here (batch size 1, no stop strings, 256 new tokens, contrastive activations
   recomputed for every trial), on a trained model that stops by itself (the embedded ``tiny``).
   Target >= 20x.
3. ``activations`` (`extraction.py`): one forward reading every layer
   (`steerlight.steering.activations`) vs one forward per layer. Target: L times fewer forwards
   and >= 0.8 L speed-up.
4. ``dac`` (`dac_cost.py`): DAC generation (three KV caches) vs CAA generation, same length.
   Target <= 2x.
5. ``pruning`` (`pruning.py`): a 20-trial `steerlight.search` with the median pruner vs
   ``pruner="none"``, counting generated tokens. Target >= 45% fewer tokens, best val accuracy
   within one question.
6. ``cache`` (`cache.py`): plain generation with each KV cache (steerlight's own, if any, and
   Transformers' dynamic and static) on the random model (``--batch``, ``--new-tokens``) and
   on the tiny one (``--trial-batch`` val questions, ``--search-max-new-tokens``).
7. ``refill`` (`refill.py`): a val pass with row refill vs padded batching, same tokens, on
   both models. Target >= 1.5x.
8. ``growth`` (`growth.py`): how a val pass's time grows with val questions (50..500), model
   width (hidden 128..1024) and max new tokens (16..128), for plain, CAA and DAC, with a least-
   squares line per method (slope, R^2; it should be straight in questions and tokens, and the
   report says where it is not and why), written as a figure beside ``--out``
   (``<stem>.growth.png``); and the peak memory of CAA vs DAC (three KV caches) at batch 32 with
   1,024-token prompts (peak tensor bytes). Target: DAC <= 3x CAA's memory, R^2 >= 0.99.
9. ``real`` (`real.py`): a 5-shot and a chat val pass of real GSM8K questions on SmolLM2-135M,
   steerlight's fast path vs its plain path, same tokens. Targets: 5-shot >= 2.5x, chat >= 1.5x.
10. ``curves`` (`curves.py`): val-pass time against questions and shared-prefix length for the
   plain path, prefix reuse and the fast path (prefix reuse + the cache written in place), on
   few-shot shaped prompts and a small random Llama; a figure beside ``--out``.

Parts 1, 3 and 4 use a random-weight Llama (default about 58M parameters; ``--hidden``,
``--layers`` scale it up on a GPU), part 8 the same model at the sizes it sweeps
(``--growth-*``). Random weights never stop on their own, so their
generation has a fixed length: the end-of-sequence id is one the model cannot emit.
Shared helpers: `common.py` (timing, results, report), `bench_models.py` (models, questions),
`generation.py` (the batch of parts 1 and 4).

    python scripts/bench --out bench.json            # everything (about 15-20 min, 2-core CPU)
    python scripts/bench --quick --out /tmp/q.json   # smoke run: tiny models, seconds
    python scripts/bench --parts hook,dac --device cuda --dtype bfloat16 --hidden 2048

Results go to ``--out`` (JSON) and a markdown table next to it (``.md``), and to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from bench_models import RandomBench, random_bench, resolve_tiny
from cache import bench_cache
from common import DTYPES, ROOT, Result, machine, markdown
from curves import bench_curves
from dac_cost import dac_contenders, dac_result
from extraction import bench_activations
from generation import CAA, Contender, generation_batch, timed_generation
from growth import bench_growth
from hook import hook_contenders, hook_result
from pruning import bench_pruning
from real import bench_real
from refill import bench_refill
from trial import bench_trial

# The parts import steerlight inside their functions, so this comes in time for all of them.
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

PARTS = (
    "hook", "trial", "activations", "dac", "pruning", "cache", "refill", "growth", "real", "curves"
)  # fmt: skip
ORDER = (
    "hook_overhead",
    "trial_cost",
    "activation_extraction",
    "dac_vs_caa",
    "pruning",
    "cache",
    "refill",
    "growth",
    "real",
    "curves",
)
"""The report's order of results, one per part."""


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (`python scripts/bench --help`)."""
    p = argparse.ArgumentParser(
        prog="python scripts/bench",
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
    g.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
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
        "installed on first use; --quick: a tiny random model)",
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
    g = p.add_argument_group("growth (part growth: random Llama, fixed-length val passes)")
    g.add_argument(
        "--growth-questions",
        type=_sizes,
        default=(50, 100, 200, 500),
        help="val questions of the questions sweep (comma-separated)",
    )
    g.add_argument(
        "--growth-hidden",
        type=_sizes,
        default=(128, 256, 512, 1024),
        help="hidden sizes of the width sweep (comma-separated; each divisible by --heads)",
    )
    g.add_argument(
        "--growth-tokens",
        type=_sizes,
        default=(16, 32, 64, 128),
        help="max new tokens of the tokens sweep (comma-separated)",
    )
    g.add_argument(
        "--growth-at-questions",
        type=int,
        default=25,
        help="val questions of the width and tokens sweeps",
    )
    g.add_argument(
        "--growth-at-hidden",
        type=int,
        default=128,
        help="hidden size of the questions and tokens sweeps and of the memory probe",
    )
    g.add_argument(
        "--growth-at-tokens",
        type=int,
        default=8,
        help="max new tokens of the questions and width sweeps",
    )
    g.add_argument("--growth-layers", type=int, default=4, help="decoder layers of every model")
    g.add_argument("--growth-batch", type=int, default=25, help="val batch size of a val pass")
    g.add_argument(
        "--growth-repeats", type=int, default=2, help="timed repeats per point (median reported)"
    )
    g.add_argument(
        "--memory-batch", type=int, default=32, help="prompts of the peak-memory generation"
    )
    g.add_argument(
        "--memory-prompt-tokens",
        type=int,
        default=1024,
        help="tokens per prompt (random ids) of the peak-memory generation",
    )
    g.add_argument(
        "--memory-new-tokens",
        type=int,
        default=4,
        help="new tokens of the peak-memory generation (a few: the caches are the prompt's)",
    )
    g = p.add_argument_group("real model (part real: GSM8K val questions from --gsm8k-dir)")
    g.add_argument(
        "--real-model",
        default="smollm2-135m-instruct",
        help="model name, alias or path (default: SmolLM2-135M-Instruct from its wheel)",
    )
    g.add_argument("--real-questions", type=int, default=64, help="val questions per pass")
    g.add_argument(
        "--real-batch", type=int, default=8, help="the plain path's rows decoded at once"
    )
    g.add_argument("--real-new-tokens", type=int, default=256, help="max new tokens per answer")
    g = p.add_argument_group("cost curves (part curves: few-shot shaped prompts, random Llama)")
    g.add_argument(
        "--curves-questions",
        type=_sizes,
        default=(16, 32, 64, 128),
        help="questions of the questions sweep (comma-separated), at the longest prefix",
    )
    g.add_argument(
        "--curves-prefix",
        type=_sizes,
        default=(64, 256, 512, 1024),
        help="shared-prefix tokens of the prefix sweep (comma-separated)",
    )
    g.add_argument(
        "--curves-at-questions", type=int, default=32, help="questions of the prefix sweep"
    )
    g.add_argument("--curves-hidden", type=int, default=256, help="hidden size of the model")
    g.add_argument("--curves-layers", type=int, default=4, help="decoder layers of the model")
    g.add_argument("--curves-vocab", type=int, default=8000, help="vocabulary of the model")
    g.add_argument("--curves-slots", type=int, default=16, help="rows decoded at once")
    g.add_argument("--curves-new-tokens", type=int, default=32, help="new tokens per answer")
    g.add_argument("--curves-repeats", type=int, default=3, help="timed repeats per point")
    return p


def _sizes(text: str) -> tuple[int, ...]:
    """``50,100,200`` -> (50, 100, 200): a sweep, at least two increasing positive sizes."""
    sizes = tuple(int(s) for s in text.split(",") if s.strip())
    if len(sizes) < 2 or sizes[0] < 1 or list(sizes) != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"want two or more increasing sizes, got {text!r}")
    return sizes


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
    "growth_questions": (4, 8),
    "growth_hidden": (32, 64),
    "growth_tokens": (2, 4),
    "growth_at_questions": 4,
    "growth_at_hidden": 32,
    "growth_at_tokens": 2,
    "growth_layers": 2,
    "growth_batch": 4,
    "growth_repeats": 1,
    "memory_batch": 2,
    "memory_prompt_tokens": 16,
    "memory_new_tokens": 2,
    "real_questions": 4,
    "real_batch": 2,
    "real_new_tokens": 8,
    "curves_questions": (4, 8),
    "curves_prefix": (16, 32),
    "curves_at_questions": 4,
    "curves_hidden": 32,
    "curves_layers": 2,
    "curves_vocab": 500,
    "curves_slots": 2,
    "curves_new_tokens": 4,
    "curves_repeats": 1,
}
"""What --quick changes (each field only where it would be larger; a sweep where its largest
size would be)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parsed options, ``--parts`` as a list, and ``--quick``'s smaller sizes applied."""
    args = build_parser().parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        build_parser().error(f"unknown --parts {sorted(unknown)}; choose from {PARTS}")
    if args.quick:
        for name, value in QUICK.items():
            mine = getattr(args, name)
            if isinstance(value, tuple):
                setattr(args, name, value if max(mine) > max(value) else mine)
            else:
                setattr(args, name, min(mine, value))
    return args


# -- running the parts -------------------------------------------------------------------------


def bench_generation(
    args: argparse.Namespace, device: torch.device, bench: RandomBench
) -> list[Result]:
    """Parts hook and dac: one batch, every method, interleaved in the same rounds."""
    gen = generation_batch(args, device, bench)
    contenders: dict[str, Contender] = {}
    if "hook" in args.parts:
        contenders |= hook_contenders(gen, args.repeats)
    contenders[CAA] = Contender(gen.caa, args.repeats)
    if "dac" in args.parts:
        contenders |= dac_contenders(gen, args.repeats, args.naive_dac_repeats)
    times, outputs, med = timed_generation(gen, contenders, device)
    results = []
    if "hook" in args.parts:
        results.append(hook_result(args, gen, times, outputs, med))
    if "dac" in args.parts:
        results.append(dac_result(args, gen, times, outputs, med))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen parts; print the markdown table, write ``--out`` (JSON) and its ``.md``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    meta = {
        "command": "python scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
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
        if {"hook", "dac", "activations", "cache", "refill", "growth"} & set(args.parts):
            bench = random_bench(args, device)
            if {"hook", "dac"} & set(args.parts):
                _progress("generation: plain, CAA, DAC", started)
                results += bench_generation(args, device, bench)
            if "activations" in args.parts:
                _progress("activation extraction", started)
                results.append(bench_activations(args, device, bench))
            if "growth" in args.parts:
                results.append(
                    bench_growth(args, device, bench, lambda what: _progress(what, started))
                )
        if {"trial", "pruning", "cache", "refill"} & set(args.parts):
            tiny, what = resolve_tiny(args, workdir)
            if "cache" in args.parts:
                _progress("KV caches: steerlight's vs Transformers' dynamic and static", started)
                results.append(bench_cache(args, device, bench, tiny))
            if "refill" in args.parts:
                _progress("row refill: a val pass vs padded batching", started)
                results.append(bench_refill(args, device, bench, tiny))
            if "trial" in args.parts:
                _progress("one trial: steerlight vs naive", started)
                results.append(bench_trial(args, device, tiny, what))
            if "pruning" in args.parts:
                _progress("pruning: two searches", started)
                results.append(bench_pruning(args, tiny, what))
        if "real" in args.parts:
            _progress("real model: a val pass, fast vs plain path", started)
            results.append(bench_real(args, device))
        if "curves" in args.parts:
            _progress("cost curves: val-pass time vs questions and prompt length", started)
            results.append(bench_curves(args, device))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results.sort(key=lambda r: ORDER.index(r.name))
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

"""Part ``refill``: a val pass with row refill vs padded batching, same questions.

Three contenders, same tokens asserted: padded batching (`generate`, one left-padded batch at a
time: a batch decodes until its longest row stops), refill inside each batch (finished rows
leave the batch) and refill across the batches (what the module does: `--trial-batch` slots
over a val step's questions, a finished row's slot taking the next question). On the embedded
tiny model (``--val`` questions, batch ``--trial-batch``, ``--search-max-new-tokens``, the
preset's stop string) and on the random bench model (3 x ``--batch`` questions,
``--new-tokens``), whose rows stop at an end-of-sequence id chosen so that they stop at
different steps. Target >= 1.5x.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from bench_models import FixedLengthTokenizer, RandomBench, data_config, left_padded
from common import Result, median, n_params, timed_rounds
from torch import Tensor

PADDED = "padded batching"
IN_BATCH = "refill inside each batch"
ACROSS = "refill across batches (the module)"


def val_pass_contenders(
    model: Any,
    tok: Any,
    batches: list[tuple[Tensor, Tensor]],
    settings: Any,
    stop: list[str],
    row_steps: list[int],
) -> dict[str, Callable[[], list[str]]]:
    """The three ways to generate `batches` (each a left-padded (ids, mask)); padded batching
    leaves its row-steps, all and unfinished, in `row_steps`."""
    from steerlight.model.generation import generate
    from steerlight.model.refill import refill_generate

    slots = batches[0][0].shape[0]
    everything = tok.pad(
        {
            "input_ids": [
                row[m.bool()].tolist()
                for ids, mask in batches
                for row, m in zip(ids, mask, strict=True)
            ]
        },
        padding=True,
        return_tensors="pt",
    )

    def padded() -> list[str]:
        gens = [generate(model, tok, ids, mask, settings, stop) for ids, mask in batches]
        # row-steps of padded batching, and those of rows still generating (refill's work)
        row_steps[:] = [sum(g.tokens.numel() for g in gens)]
        row_steps.append(sum(int((g.tokens != tok.pad_token_id).sum()) for g in gens))
        return [t for g in gens for t in g.texts]

    def in_batch() -> list[str]:
        out = [refill_generate(model, tok, ids, mask, settings, stop) for ids, mask in batches]
        return [t for g in out for t in g.texts]

    def across() -> list[str]:
        ids, mask = everything["input_ids"], everything["attention_mask"]
        return refill_generate(model, tok, ids, mask, settings, stop, slots=slots).texts

    return {PADDED: padded, IN_BATCH: in_batch, ACROSS: across}


def _time(contenders: dict[str, Callable[[], list[str]]], repeats: int, device: torch.device):
    times, outputs = timed_rounds(contenders, dict.fromkeys(contenders, repeats), device)
    for name, texts in outputs.items():  # refill must not change a token
        assert texts == outputs[PADDED], name
    return times, {k: median(v) for k, v in times.items()}


def early_stop_ids(
    model: Any, fixed: Any, batches: list[tuple[Tensor, Tensor]], settings: Any
) -> list[int]:
    """End-of-sequence ids for random weights, which never stop on their own: tokens of a free
    run added one at a time until about 40% of the padded row-steps belong to finished rows,
    as measured on a real val pass (random weights repeat tokens, so one id is rarely enough).
    """
    from steerlight.model.generation import generate

    free = [generate(model, fixed, ids, mask, settings).tokens for ids, mask in batches]
    n = free[0].shape[1]

    def finished_share(tokens: list[int]) -> float:
        used = padded = 0
        for run in free:
            hits = torch.isin(run, torch.tensor(tokens))
            lengths = torch.where(hits.any(1), hits.float().argmax(1) + 1, torch.tensor(n))
            used, padded = used + int(lengths.sum()), padded + int(lengths.max()) * len(lengths)
        return 1 - used / padded

    chosen: list[int] = []
    candidates = torch.cat(free).unique().tolist()
    while finished_share(chosen) < 0.35 and len(chosen) < len(candidates):
        best = min(
            (t for t in candidates if t not in chosen),
            key=lambda t: abs(finished_share([*chosen, t]) - 0.4),
        )
        chosen.append(best)
    return chosen


def bench_refill(
    args: argparse.Namespace, device: torch.device, bench: RandomBench, tiny: str
) -> Result:
    """Part refill on both models."""
    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.data.prompts import get_preset
    from steerlight.model.generation import GenerationSettings, split_rows
    from steerlight.model.loading import load_model, load_tokenizer

    model = load_model(tiny, dtype=args.dtype).to(device)
    tok = load_tokenizer(tiny)
    dm = GSM8KDataModule(tokenizer=tok, **data_config(args, args.val, args.trial_batch))
    dm.setup()
    batches = [  # the generation batches of each val step (a step holds several)
        (ids.to(device), mask.to(device))
        for b in dm.val_dataloader()
        for ids, mask in split_rows(b["input_ids"], b["attention_mask"], b["slots"])
    ]
    settings = GenerationSettings(max_new_tokens=args.search_max_new_tokens)
    stop = list(get_preset("gsm8k").stop)
    tiny_steps: list[int] = []
    tiny_times, tiny_med = _time(
        val_pass_contenders(model, tok, batches, settings, stop, tiny_steps), args.repeats, device
    )

    rows = bench.rows["test"][: 3 * args.batch]
    prompts = [f"Question: {r['question']}\nAnswer:" for r in rows]
    r_settings = GenerationSettings(max_new_tokens=args.new_tokens)
    fixed = FixedLengthTokenizer(bench.tokenizer, args.vocab)
    r_batches = [
        left_padded(bench.tokenizer, prompts[i : i + args.batch], device)
        for i in range(0, len(prompts), args.batch)
    ]
    eos = early_stop_ids(bench.model, fixed, r_batches, r_settings)
    stopper = FixedLengthTokenizer(bench.tokenizer, eos[0])
    own = bench.model.generation_config.eos_token_id
    random_steps: list[int] = []
    bench.model.generation_config.eos_token_id = eos  # steerlight's calls read them from here
    try:
        r_contenders = val_pass_contenders(
            bench.model, stopper, r_batches, r_settings, [], random_steps
        )
        random_times, random_med = _time(r_contenders, args.repeats, device)
    finally:
        bench.model.generation_config.eos_token_id = own

    def speedup(med: dict[str, float]) -> dict[str, float]:
        return {k: med[PADDED] / med[k] for k in (IN_BATCH, ACROSS)}

    ratios = {"tiny": speedup(tiny_med), "random": speedup(random_med)}
    # If a step cost in proportion to its rows, refill could gain at most padded / unfinished
    # row-steps; a step that costs the same for any rows (reading the weights) gains more.
    ceilings = {"tiny": tiny_steps[0] / tiny_steps[1], "random": random_steps[0] / random_steps[1]}
    worst = min(r[ACROSS] for r in ratios.values())
    return Result(
        "refill",
        "Row refill: a val pass vs padded batching",
        worst,
        "padded batching time / refill-across-batches time (worse of the two models)",
        ">= 1.5x",
        worst >= 1.5,
        f"tiny: {tiny_med[PADDED]:.2f} / {tiny_med[IN_BATCH]:.2f} / {tiny_med[ACROSS]:.2f} s; "
        f"random: {random_med[PADDED]:.2f} / {random_med[IN_BATCH]:.2f} / "
        f"{random_med[ACROSS]:.2f} s (padded / refill in batch / across batches); "
        f"padded / unfinished row-steps {ceilings['tiny']:.2f}x and {ceilings['random']:.2f}x",
        {
            **{f"tiny {k}": v for k, v in tiny_times.items()},
            **{f"random {k}": v for k, v in random_times.items()},
        },
        {
            "tiny_model": f"{tiny}, {n_params(model) / 1e6:.2f}M params",
            "tiny_questions": sum(len(b[0]) for b in batches),
            "tiny_batch": args.trial_batch,
            "random_model": f"random Llama, {n_params(bench.model) / 1e6:.1f}M params",
            "random_questions": len(prompts),
            "random_batch": args.batch,
            "random_eos": eos,
            "speedups": ratios,
            "padded_over_unfinished_row_steps": ceilings,
        },
    )

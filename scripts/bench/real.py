"""Part ``real``: a val pass of real GSM8K questions on a real model, fast path vs plain path.

The model is ``--real-model`` (SmolLM2-135M-Instruct from its wheel by default), the questions
the first ``--real-questions`` of steerlight's val split of ``--gsm8k-dir``, decoded as the
module decodes a val step (row refill over ``--real-batch`` slots, the preset's stops, at most
``--real-new-tokens`` tokens). Two prompt forms, each decoded by both paths in the same run,
rounds interleaved:

- ``gsm8k`` 5-shot: about 800 prompt tokens, of which the five exemplars are shared;
- ``chat`` zero-shot: the chat template's system turn is the shared part, the answer is long.

The plain path is steerlight with ``prefix_reuse: false`` and ``cache_in_place: false`` (the
dynamic cache Transformers copies at every step) at ``--real-batch`` rows (the configs' 8);
the fast path reuses the shared prefix, writes the cache in place, at the batch
``data.batch_size: auto`` measures (`steerlight.model.batch_size`). Both must give the same tokens
(``tokens_identical``). A forward hook splits each pass into prefill (forwards of several
columns) and decode (one column) time, and generated tokens/s are set against the compute
limit: FLOPs per token (2 x parameters) x tokens/s over the machine's matmul rate measured
here. Targets on 2 CPU cores: 5-shot >= 2.5x, chat >= 1.5x.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from common import Result, median, n_params, timed_rounds

PLAIN, FAST = "plain", "fast"
TARGETS = {"gsm8k": 2.5, "chat": 1.5}
FORMS = {"gsm8k": 5, "chat": 0}
"""Prompt preset -> few-shot exemplars."""


class PhaseTimer:
    """Seconds the model spends in prefill (chunks of several columns) and decode (one column)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self._start = 0.0
        self._phase = "decode"

    @contextmanager
    def running(self) -> Iterator[PhaseTimer]:
        handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post),
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._phase = "decode" if ids is not None and ids.shape[1] == 1 else "prefill"
        _sync(self.device)
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        _sync(self.device)
        self.seconds[self._phase] += time.perf_counter() - self._start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 1024) -> float:
    """The machine's dense matmul rate (GFLOP/s): the median of 5 timed (size x size) products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / median(times) / 1e9


def val_questions(args: argparse.Namespace, tokenizer: Any, preset: str) -> tuple[Any, Any]:
    """The left-padded (ids, mask) of the first ``--real-questions`` val questions."""
    from steerlight.data.datamodule import GSM8KDataModule

    dm = GSM8KDataModule(
        source=str(args.gsm8k_dir),
        tokenizer=tokenizer,
        preset=preset,
        n_shots=FORMS[preset],
        limit_val=args.real_questions,
        limit_train=FORMS[preset] or 1,
    )
    dm.setup("validate")
    batch = dm.collate(dm.splits["val"])
    return batch["input_ids"], batch["attention_mask"]


def measure_form(
    args: argparse.Namespace,
    device: torch.device,
    model: Any,
    tok: Any,
    settings: dict[str, Any],
    preset: str,
) -> dict[str, Any]:
    """One prompt form's val pass by both paths, timed in interleaved rounds."""
    from steerlight.data.prompts import get_preset
    from steerlight.model.batch_size import find_batch_size
    from steerlight.model.generation import GenerationSettings
    from steerlight.model.loading import weights_fingerprint
    from steerlight.model.refill import refill_generate

    timer = PhaseTimer(model, device)
    ids, mask = (t.to(device) for t in val_questions(args, tok, preset))
    stop = list(get_preset(preset).stop)
    length = ids.shape[1] + args.real_new_tokens
    rows = {PLAIN: args.real_batch}
    rows[FAST] = find_batch_size(model, length, weights_fingerprint(model), limit=len(ids))
    split: dict[str, dict[str, float]] = {}

    def val_pass(name: str) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            timer.seconds = {"prefill": 0.0, "decode": 0.0}
            with timer.running():
                gen = refill_generate(model, tok, ids, mask, settings[name], stop, rows[name])
            split[name] = dict(timer.seconds)
            return gen.tokens.tolist()

        return run

    contenders = {name: val_pass(name) for name in settings}
    one = ids[:1], mask[:1]  # warm-up: one question, a few tokens
    short = GenerationSettings(max_new_tokens=4)
    warm = dict.fromkeys(contenders, lambda: refill_generate(model, tok, *one, short, stop))
    times, outputs = timed_rounds(contenders, dict.fromkeys(contenders, 1), device, warm)
    med = {k: median(v) for k, v in times.items()}
    pad = tok.pad_token_id
    tokens = sum(sum(t != pad for t in row) for row in outputs[FAST])
    prompts = [row[m.bool()] for row, m in zip(ids, mask, strict=True)]
    gaps = tie_gaps(model, prompts, outputs[PLAIN], outputs[FAST], pad)
    return {
        "ratio": med[PLAIN] / med[FAST],
        "tokens_identical": outputs[PLAIN] == outputs[FAST],
        "rows_differing": len(gaps),
        "rows": len(prompts),
        "top2_logit_gap_where_rows_part": gaps,
        "batch": rows,
        "seconds": med,
        "generated_tokens": tokens,
        "prompt_tokens": sum(len(p) for p in prompts),
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "prefill_decode_s": split,
        "times_s": times,
    }


@torch.no_grad()
def tie_gaps(
    model: Any, prompts: list[Any], plain: list[list[int]], fast: list[list[int]], pad: int
) -> list[float]:
    """For each row whose tokens differ: the gap between the plain path's two best next-token
    logits where the rows part (a gap near float noise is a tie either path may break)."""
    gaps = []
    for prompt, a, b in zip(prompts, plain, fast, strict=True):
        if a == b:
            continue
        same = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y or x == pad)
        ids = torch.cat([prompt, prompt.new_tensor(a[:same])])[None]
        top = model(input_ids=ids).logits[0, -1].float().topk(2).values
        gaps.append(float(top[0] - top[1]))
    return gaps


def bench_real(args: argparse.Namespace, device: torch.device) -> Result:
    """Part real: both prompt forms, plain vs fast, on the real model."""
    from steerlight.model.generation import GenerationSettings
    from steerlight.model.loading import load_model, load_tokenizer

    model = load_model(args.real_model, dtype=args.dtype).to(device)
    tok = load_tokenizer(args.real_model)
    plain = GenerationSettings(
        max_new_tokens=args.real_new_tokens, prefix_reuse=False, cache_in_place=False
    )
    settings = {PLAIN: plain, FAST: replace(plain, prefix_reuse=True, cache_in_place=True)}
    chat = bool(getattr(tok, "chat_template", None))  # (a model without one: 5-shot only)
    presets = [p for p in FORMS if chat or p != "chat"]
    forms = {p: measure_form(args, device, model, tok, settings, p) for p in presets}
    rate = matmul_gflops(device, next(model.parameters()).dtype)
    flops_per_token = 2 * n_params(model)
    for form in forms.values():
        decode_s = form["prefill_decode_s"][FAST]["decode"]
        form["decode_gflops"] = form["generated_tokens"] * flops_per_token / decode_s / 1e9
        form["decode_fraction_of_matmul_rate"] = form["decode_gflops"] / rate
    met = all(f["ratio"] >= TARGETS[p] and f["tokens_identical"] for p, f in forms.items())

    def line(p: str) -> str:
        f = forms[p]
        s = f["seconds"]
        return (
            f"{p}: {s[PLAIN]:.1f} / {s[FAST]:.1f} s = {f['ratio']:.2f}x "
            f"(target {TARGETS[p]}x), rows differing {f['rows_differing']}/{f['rows']}, "
            f"{f['tokens_per_s'][FAST]:.0f} tok/s"
        )

    return Result(
        "real",
        f"Real model ({args.real_model}): a val pass, fast vs plain path",
        forms["gsm8k"]["ratio"],
        "plain / fast time of the 5-shot val pass (chat's in details.forms)",
        "5-shot >= 2.5x, chat >= 1.5x, same tokens" + ("" if chat else " (no chat template)"),
        met,
        "; ".join(line(p) for p in forms) + f"; matmul {rate:.0f} GFLOP/s",
        {f"{p} {k}": v for p, f in forms.items() for k, v in f.pop("times_s").items()},
        {
            "model": f"{args.real_model}, {n_params(model) / 1e6:.1f}M params",
            "questions": args.real_questions,
            "batch": args.real_batch,
            "max_new_tokens": args.real_new_tokens,
            "matmul_gflops": rate,
            "flops_per_token": flops_per_token,
            "tokens_identical": all(f["tokens_identical"] for f in forms.values()),
            "forms": forms,
        },
    )

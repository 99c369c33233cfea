"""Part ``trial``: one search trial of steerlight vs the naive loop of the original pipeline.

steerlight's trial is a `fit` whose activations and vectors are cached (batched, length-sorted,
stop strings); the naive loop (`NaivePipeline`) has batch size 1, no stop strings, up to 256
new tokens and recomputes the contrastive activations for every trial. Both run on a trained
model that stops by itself (the embedded ``tiny``). Target >= 20x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_models import data_config
from common import (
    ForwardCounter,
    Result,
    add_after_layer,
    median,
    n_params,
    quiet_lightning,
    timed_rounds,
    working_folder,
)
from torch import Tensor, nn


@dataclass
class NaiveOutcome:
    """What one naive trial scored and cost."""

    correct: int
    tokens: int
    forwards: int


class NaivePipeline:
    """The original pipeline's trial, reimplemented: no batching, no cache, no stop strings.

    Every trial re-reads the contrastive activations (one forward per text, batch size 1,
    all hidden states), takes the CAA vector at the trial's layer, then generates each val
    question alone for up to `max_new_tokens` tokens (only EOS ends a row early) with a plain
    addition of ``alpha * v`` after the layer at every position. Completions are cut at the
    preset's stop string afterwards, only for scoring.
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
        """Vector from scratch, then every val question generated alone and scored."""
        from steerlight.answers import extract, is_correct
        from steerlight.model.generation import cut_at_stop
        from steerlight.model.layers import decoder_layers

        vector = self.vector(layer, seed)
        add = (alpha * vector).to(next(self.model.parameters()).dtype)

        correct = tokens = 0
        block = decoder_layers(self.model)[layer]
        with add_after_layer(block, lambda _hidden: add), ForwardCounter(self.model) as counter:
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
        return NaiveOutcome(correct, tokens, counter.count)


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
            "generation": {"max_new_tokens": args.max_new_tokens},
            "seed": args.seed,
            "cache_dir": str(cache_dir),
            "log_samples": 0,
        },
        "data": data_config(args, args.val, args.trial_batch),
    }


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
                with timed_method(cli.model, "generate_batch") as spent, ForwardCounter(model) as n:
                    cli.trainer.fit(cli.model, cli.datamodule)  # (the same model: reused)
                generation_s.append(spent[0])
                last["forwards"] = n.count
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
        ">= 20x",
        speedup >= 20,
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
            # fewer forwards, but each of many rows: their cost ratio is what batching buys
            "steerlight_forwards": last["forwards"],
            "steerlight_ms_per_forward": 1000 * generation / last["forwards"],
            "naive_ms_per_forward": 1000
            * median(times["naive trial"])
            / (outcome.forwards + 2 * len(dm.splits["train"])),
            "naive_activation_forwards": 2 * len(dm.splits["train"]),
        },
    )

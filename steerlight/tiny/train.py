"""Training the tiny model: a Lightning loop over packed rows, then ``save_pretrained``.

This module imports torch and Lightning at the top; `steerlight.tiny.cache` imports it only
when a build is actually needed, so finding a cached model stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from steerlight.errors import SteerlightError
from steerlight.progress import StepProgress
from steerlight.tiny.data import (
    SOLUTION,
    _encode_drills,
    _encode_examples,
    _separator_ids,
    batches,
    training_rows,
)
from steerlight.tiny.recipe import TinyRecipe

BUILD_THREADS = 2
"""Intra-op threads of every build, whatever the machine has (the result depends on them)."""


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """The build's Trainer is internal: its device notices, tips and deprecations are not shown
    (the build's own lines, `StepProgress`, are its one progress stream)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class TinyLM(pl.LightningModule):
    """Next-token loss on the labelled (question and solution) positions of packed rows."""

    def __init__(self, model: torch.nn.Module, recipe: TinyRecipe) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.weight_of = torch.tensor([0.0, recipe.question_loss, 1.0])  # by target kind

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        ids, labels, kinds = batch
        hidden = self.model.model(input_ids=ids).last_hidden_state
        weights = self.weight_of.to(hidden.dtype)[kinds]
        keep = weights > 0
        logits = self.model.lm_head(hidden[keep])  # the head only where the loss is
        ce = F.cross_entropy(logits, labels[keep], reduction="none")
        loss = (ce * weights[keep]).sum() / weights[keep].sum()
        solution = kinds[keep] == SOLUTION
        # The logged loss is the solutions' alone, comparable across `question_loss` values.
        self.log("loss", ce[solution].mean().detach(), prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        recipe = self.recipe
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": recipe.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=recipe.lr,
            betas=(0.9, 0.98),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, recipe=recipe))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _lr_factor(step: int, recipe: TinyRecipe) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


class PackedBatches(IterableDataset):
    """`steerlight.tiny.data.batches` as a dataset; every iteration starts the same rows anew."""

    def __init__(
        self,
        recipe: TinyRecipe,
        examples: Sequence[tuple[list[int], int]],
        drills: Sequence[tuple[list[int], int]],
        sep: Sequence[int],
        eos_id: int,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.args = (recipe, examples, drills, sep, eos_id, pad_id)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return batches(*self.args)


def build_tiny_model(recipe: TinyRecipe, out_dir: str | Path) -> dict[str, Any]:
    """Train the tiny model of `recipe` and ``save_pretrained`` it (and its tokenizer) to `out_dir`.

    Returns build metrics (parameters, seconds, final loss). The global torch RNG is left as it
    was; all randomness comes from ``recipe.seed``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from steerlight.data.prompts import get_preset
    from steerlight.tiny.tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    start = time.perf_counter()
    rows = training_rows(recipe)
    preset = get_preset("gsm8k")
    tokenizer = build_tokenizer(
        [preset.render(r["question"]) + preset.continuation(r["answer"]) for r in rows],
        vocab_size=recipe.vocab_size,
    )
    tokenizer.model_max_length = recipe.max_position_embeddings
    examples = _encode_examples(tokenizer, rows)
    sep = _separator_ids(tokenizer)
    drills = _encode_drills(tokenizer, rows)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # A fixed thread count: CPU reductions split work by threads, so the same recipe gives the
    # same bytes on any core count (the shipped copy is checked against a rebuild).
    with _threads(BUILD_THREADS), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
        model.train()
        module = TinyLM(model, recipe)
        loader = DataLoader(
            PackedBatches(
                recipe, examples, drills, sep, tokenizer.eos_token_id, tokenizer.pad_token_id
            ),
            batch_size=None,  # the dataset yields whole batches
        )
        with _quiet_lightning():
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                precision="32-true",
                max_steps=recipe.steps,
                max_epochs=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,  # one stream: StepProgress's lines, terminal or log
                enable_model_summary=False,
                callbacks=[StepProgress("tiny model build")],
                gradient_clip_val=recipe.grad_clip,
                log_every_n_steps=10,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                default_root_dir=str(out_dir),
            )
            trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step < recipe.steps:  # stopped (a signal): never install a partial model
        raise SteerlightError(
            f"tiny model build stopped at step {trainer.global_step}/{recipe.steps}"
        )
    final_loss = float(trainer.callback_metrics.get("loss", float("nan")))

    model.eval().to(torch.bfloat16)  # half the file; every steerlight config loads it as float32
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    seconds = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_problems": len(rows),
        "final_loss": final_loss,
        "build_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""The embedded default model: a tiny Llama that steerlight trains on synthetic GSM8K and caches.

No model can be downloaded on an offline machine, so `tiny_model_path()` builds one: a
`LlamaForCausalLM` of about a million parameters (RMSNorm, RoPE, SwiGLU, a plain residual
stream, so steering hooks apply exactly as on a real model) and a byte-level BPE tokenizer
that splits digits, both trained on the *train* split of the `synthetic` source with a small
Lightning loop. The result is saved with ``save_pretrained`` under
``$STEERLIGHT_HOME/tiny/<recipe key>/`` (default ``~/.cache/steerlight``) and loads with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``; every field of
`TinyRecipe` is part of the key, so changing the recipe builds a new folder.

Training data. The synthetic train split (with the data module's default seed and sizes)
minus the default validation hold-out, so neither the val nor the test questions are ever
seen. Each training row packs several problems in the ``gsm8k`` preset's few-shot format::

    Question: {q1}\\nAnswer: {solution1}\\n\\nQuestion: {q2}\\nAnswer: {solution2} ... </s>

The loss covers every solution (and the final ``</s>``) and, at a lower or equal weight, the
questions after the first token of a row. Most rows hold one problem, learned zero-shot; the
others hold two or three, so later problems are learned with exemplars in front. Even so the
model is a zero-shot solver: with exemplars in the prompt it confuses their numbers with the
question's (exact match 41.6% zero-shot, 10.0% one-shot, 7.6% two-shot on the default test), so
use it with ``n_shots: 0`` as ``configs/debug.yaml`` does. Generation ends with ``</s>`` (or the
preset's stop string ``Question:``). A few rows per batch rehearse the calculator notes of the
training solutions (`` <<14-9=5>>``) on their own: cheap arithmetic practice on train-split
facts.

What makes it learn in minutes (measured by ``scripts/tiny_quality.py``): small numbers in the
synthetic problems (most reading errors were copying a two-digit number wrong), a loss on the
questions too (the model learns to read them), the note drills, and many small heads.

Building is atomic: the model is written into a temporary folder next to the final one and
renamed into place, so a crashed or concurrent build never leaves a half-written cache; where
``fcntl`` exists a lock file also keeps two local processes from training the same recipe twice.

``python -m steerlight.tiny`` builds it explicitly and can measure its accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerlight.io import steerlight_home

log = logging.getLogger(__name__)

BUILD_FORMAT = 1
"""Bumped whenever the training code changes what a recipe produces (it is part of the key)."""

_MARKER = "tiny_recipe.json"
"""Written last into a build: a cache folder without it (or with another recipe) is not valid."""

_STALE_TMP_S = 24 * 3600
"""Temporary build folders older than this are leftovers of dead builds and are removed."""


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model; all fields (and `BUILD_FORMAT`) form its key."""

    seed: int = 0
    """Seed of the weight initialisation and of the order of the training rows."""
    data_seed: int = 1234
    """Seed of the synthetic problems (the data module's default ``split_seed``)."""
    n_train: int = 4000
    """Synthetic train rows generated (the data module's ``synthetic_train_size``)."""
    n_test: int = 500
    """Synthetic test rows after them (``synthetic_test_size``); never used for training."""
    val_holdout: int = 500
    """The data module's default val hold-out of train, left out of training (0: keep all)."""
    vocab_size: int = 1024
    """Target size of the byte-level BPE vocabulary (digits are always single tokens; 1024
    gives most words of the synthetic problems one token)."""
    hidden_size: int = 128
    """Width of the residual stream (what steering vectors live in)."""
    num_layers: int = 4
    """Decoder layers (each one a steering site)."""
    num_heads: int = 8
    """Head size 16: many small heads learn the digit-gathering of arithmetic much faster."""
    intermediate_size: int = 512
    """Width of the SwiGLU MLPs."""
    max_position_embeddings: int = 2048
    """Longest prompt plus generation the model accepts (RoPE, so only a limit)."""
    row_problems: tuple[float, ...] = (0.6, 0.25, 0.15)
    """Weights of 1, 2, 3, ... problems per training row: the first ones are few-shot
    exemplars of the last. Empty: fill each row up to `seq_len` (slower to learn from)."""
    seq_len: int = 512
    """Most tokens in a training row."""
    batch_size: int = 12
    """Rows per optimiser step (problem rows plus `drill_rows`)."""
    drill_rows: int = 2
    """Rows per batch that rehearse the calculator notes of the training solutions
    (`` <<14-9=5>>``) on their own: cheap extra arithmetic practice on train-split facts."""
    drill_len: int = 96
    """Tokens per drill row."""
    question_loss: float = 1.0
    """Loss weight of question tokens relative to solution tokens (0: solutions only)."""
    steps: int = 1000
    """Optimiser steps: the build time is about proportional to them."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 60
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.05
    """The cosine schedule ends at ``lr * min_lr_ratio``."""
    weight_decay: float = 0.01
    """AdamW weight decay of the matrices (not of embeddings or norms)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_problems", tuple(float(w) for w in self.row_problems))
        if not 0 <= self.drill_rows < self.batch_size:
            raise ValueError(f"drill_rows must be in [0, batch_size), got {self.drill_rows}")

    def as_json(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def key(self) -> str:
        """A short hash of the recipe, `BUILD_FORMAT` and the synthetic generator's version."""
        from steerlight.data.synthetic import VERSION

        blob = json.dumps(
            {"format": BUILD_FORMAT, "synthetic": VERSION, **self.as_json()}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def minutes(self) -> float:
        """A rough build time on 2 CPU cores, for the log line: the default recipe took 3.1 to
        4.6 minutes here, and the time scales with the work per step and the steps."""
        size = (self.hidden_size / 128) ** 2 * (self.num_layers / 4)
        work = (self.steps / 1000) * (self.batch_size / 12) * (self.seq_len / 512)
        return max(0.1, 3.1 * size * work)


# ---- cache ---------------------------------------------------------------------------------


def _is_complete(path: Path, recipe: TinyRecipe) -> bool:
    marker = path / _MARKER
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    names = {p.name for p in path.iterdir()}
    has_weights = any(n.endswith((".safetensors", ".bin")) for n in names)
    return (
        saved.get("recipe") == recipe.as_json()
        and saved.get("format") == BUILD_FORMAT
        and {"config.json", "tokenizer.json"} <= names
        and has_weights
    )


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between local processes where ``fcntl`` exists; a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # e.g. a file system without locks: fall back to the atomic rename
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_tmp(parent: Path, key: str) -> None:
    now = time.time()
    for tmp in parent.glob(f".{key}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def tiny_model_path(recipe: TinyRecipe | None = None, force: bool = False) -> Path:
    """The cached folder of the tiny model for `recipe`, built (minutes, once) if missing.

    Args:
        recipe: the recipe (default `TinyRecipe()`, the embedded default).
        force: rebuild even when a valid cached copy exists (it is then replaced atomically).
    """
    recipe = recipe or TinyRecipe()
    parent = steerlight_home() / "tiny"
    final = parent / recipe.key()
    if not force and _is_complete(final, recipe):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(parent / f".{recipe.key()}.lock"):
        if not force and _is_complete(final, recipe):  # another process built it meanwhile
            return final
        _remove_stale_tmp(parent, recipe.key())
        log.warning(
            "building the embedded tiny model (recipe %s) into %s: this trains a %s-layer Llama "
            "on synthetic GSM8K and takes about %.1f minute(s) on 2 CPU cores, once",
            recipe.key(),
            final,
            recipe.num_layers,
            recipe.minutes(),
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.key()}.tmp-", dir=parent))
        try:
            metrics = build_tiny_model(recipe, tmp)
            (tmp / _MARKER).write_text(
                json.dumps(
                    {
                        "format": BUILD_FORMAT,
                        "key": recipe.key(),
                        "recipe": recipe.as_json(),
                        "metrics": metrics,
                    },
                    indent=2,
                )
            )
            _install(tmp, final, recipe, replace_valid=force)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.warning("the embedded tiny model is ready at %s", final)
    return final


def _install(tmp: Path, final: Path, recipe: TinyRecipe, replace_valid: bool = False) -> None:
    """Move the finished build `tmp` to `final` atomically, replacing an invalid copy (or, with
    `replace_valid`, any copy). A valid copy that another process installed first is kept."""
    try:
        os.replace(tmp, final)  # atomic; fails if `final` is a non-empty folder
        return
    except OSError:
        if not replace_valid and _is_complete(final, recipe):
            return  # `tmp` is removed by the caller
    # `final` exists: an invalid build, or with `replace_valid` an older one. Swap it atomically.
    trash = Path(tempfile.mkdtemp(prefix=f".{recipe.key()}.tmp-old-", dir=final.parent))
    try:
        os.replace(final, trash / "old")
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final, recipe):  # a concurrent builder won the race otherwise
            raise
    shutil.rmtree(trash, ignore_errors=True)


# ---- data ----------------------------------------------------------------------------------


def training_rows(recipe: TinyRecipe) -> list[dict[str, str]]:
    """The synthetic train rows the model learns from: train minus the default val hold-out."""
    from steerlight.data.splits import holdout_indices
    from steerlight.data.synthetic import synthetic_splits

    train = synthetic_splits(recipe.n_train, recipe.n_test, seed=recipe.data_seed)["train"]
    if recipe.val_holdout <= 0:
        return train
    held = set(holdout_indices(len(train), recipe.val_holdout, recipe.data_seed))
    return [row for i, row in enumerate(train) if i not in held]


def _encode_examples(tokenizer, rows: Sequence[dict[str, str]]) -> list[tuple[list[int], int]]:
    """Each row as (ids of ``Question: q\\nAnswer: solution``, index of the first solution token).

    The prompt is checked to tokenize to a prefix of the whole text, so the model sees exactly
    the prompt tokens at inference and produces the solution tokens it was trained on.
    """
    from steerlight.data.prompts import get_preset

    preset = get_preset("gsm8k")
    prompts = [preset.render(r["question"]) for r in rows]
    fulls = [p + preset.continuation(r["answer"]) for p, r in zip(prompts, rows, strict=True)]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    out = []
    for p, f in zip(p_ids, f_ids, strict=True):
        if f[: len(p)] != p:
            raise RuntimeError("tiny tokenizer: a gsm8k prompt does not tokenize as a prefix")
        out.append((f, len(p)))
    return out


def _separator_ids(tokenizer) -> list[int]:
    """The ids of the blank line between two exemplars, as tokenized inside a few-shot prompt."""
    a = tokenizer("#### 1", add_special_tokens=False)["input_ids"]
    b = tokenizer("Question:", add_special_tokens=False)["input_ids"]
    ab = tokenizer("#### 1\n\nQuestion:", add_special_tokens=False)["input_ids"]
    if ab[: len(a)] != a or ab[len(ab) - len(b) :] != b:
        raise RuntimeError("tiny tokenizer: the few-shot separator does not tokenize on its own")
    return ab[len(a) : len(ab) - len(b)]


QUESTION, SOLUTION = 1, 2
"""Kinds of target tokens in a packed row (0: no loss, e.g. the blank line between problems)."""


def pack_rows(
    examples: Sequence[tuple[list[int], int]],
    sep: Sequence[int],
    eos_id: int,
    seq_len: int,
    seed: int,
    problems: Sequence[float] = (),
) -> Iterator[tuple[list[int], list[int]]]:
    """Endless training rows ``(input_ids, kinds)`` in the gsm8k few-shot format.

    Problems are taken epoch by epoch in a seeded shuffled order and joined with the blank-line
    separator; the row ends with EOS. With `problems` (weights of 1, 2, 3, ... problems per
    row) a row holds that many (fewer if `seq_len` would be exceeded); without, as many as fit
    in `seq_len`. `kinds[t]` says what predicting token ``t`` from the tokens before it is:
    `SOLUTION` (a solution token or the final EOS), `QUESTION` (a question token after the
    first), or 0 (no loss).
    """
    fits = [e for e in examples if len(e[0]) + 1 <= seq_len]
    if not fits:
        raise ValueError(f"no training problem fits in seq_len={seq_len} tokens")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        ids: list[int] = []
        kinds: list[int] = []
        want = rng.choices(range(1, len(problems) + 1), weights=problems)[0] if problems else 0
        taken = 0
        while not want or taken < want:
            if not order:
                order = list(range(len(fits)))
                rng.shuffle(order)
            ex, start = fits[order[-1]]
            extra = (len(sep) if ids else 0) + len(ex) + 1
            if ids and len(ids) + extra > seq_len:
                break
            order.pop()
            taken += 1
            if ids:
                ids += sep
                kinds += [0] * len(sep)
            kinds += [0 if not ids else QUESTION] + [QUESTION] * (start - 1)
            kinds += [SOLUTION] * (len(ex) - start)
            ids += ex
        ids.append(eos_id)
        kinds.append(SOLUTION)
        yield ids, kinds


_NOTE = re.compile(r"<<[^<>=]+=[^<>]+>>")


def _encode_drills(tokenizer, rows: Sequence[dict[str, str]]) -> list[tuple[list[int], int]]:
    """The distinct calculator notes of the training solutions, e.g. `` <<14-9=5>>``, as
    (ids, index of the first token after ``=``): the arithmetic facts the drills rehearse."""
    notes = sorted({m.group() for r in rows for m in _NOTE.finditer(r["answer"])})
    eq = tokenizer.convert_tokens_to_ids("=")
    out = []
    for ids in tokenizer([" " + n for n in notes], add_special_tokens=False)["input_ids"]:
        if eq in ids:
            out.append((ids, len(ids) - ids[::-1].index(eq)))
    return out


def drill_rows(drills: Sequence[tuple[list[int], int]], seq_len: int, seed: int):
    """Endless rows of calculator notes drawn uniformly from `drills` (``(ids, kinds)``, as
    `pack_rows`): the result and ``>>`` of each note are `SOLUTION` targets, the rest no loss."""
    if not drills:
        raise ValueError("no calculator notes to drill")
    rng = random.Random(f"{seed}-drills")
    while True:
        ids: list[int] = []
        kinds: list[int] = []
        while True:
            note, start = drills[rng.randrange(len(drills))]
            if ids and len(ids) + len(note) > seq_len:
                break
            ids += note
            kinds += [0] * start + [SOLUTION] * (len(note) - start)
        yield ids, kinds


# ---- training ------------------------------------------------------------------------------


def _lightning_module(model, recipe: TinyRecipe):
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    class TinyLM(pl.LightningModule):
        """Next-token loss on the labelled (solution) positions of packed rows."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.weight_of = torch.tensor([0.0, recipe.question_loss, 1.0])  # by target kind

        def training_step(self, batch, batch_idx):
            ids, labels, kinds = batch
            hidden = self.model.model(input_ids=ids).last_hidden_state
            weights = self.weight_of.to(hidden.dtype)[kinds]
            keep = weights > 0
            logits = self.model.lm_head(hidden[keep])  # the head only where the loss is
            ce = F.cross_entropy(logits, labels[keep], reduction="none")
            loss = (ce * weights[keep]).sum() / weights[keep].sum()
            solution = kinds[keep] == SOLUTION
            self.log("loss", ce[solution].mean().detach(), prog_bar=True, on_step=True)
            return loss

        def configure_optimizers(self):
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
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return TinyLM()


def _lr_factor(step: int, recipe: TinyRecipe) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`."""
    import math

    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


def _row_len(row: tuple[list[int], list[int]]) -> int:
    return len(row[0])


def _batches(recipe: TinyRecipe, examples, drills, sep, eos_id: int, pad_id: int):
    import torch
    from torch.utils.data import IterableDataset

    class PackedRows(IterableDataset):
        def __iter__(self):
            rows = pack_rows(
                examples, sep, eos_id, recipe.seq_len, recipe.seed, recipe.row_problems
            )
            notes = drill_rows(drills, recipe.drill_len, recipe.seed) if recipe.drill_rows else None
            n_rows = recipe.batch_size - recipe.drill_rows
            pool: list[list] = []
            order = random.Random(f"{recipe.seed}-batches")
            for _ in range(recipe.steps):
                if not pool:  # rows of similar length together: little padding
                    chunk = sorted((next(rows) for _ in range(16 * n_rows)), key=_row_len)
                    pool = [chunk[i : i + n_rows] for i in range(0, len(chunk), n_rows)]
                    order.shuffle(pool)
                batch = pool.pop()
                batch += [next(notes) for _ in range(recipe.drill_rows)] if notes else []
                width = max(len(row) for row, _ in batch)
                # Right padding: causal attention never looks at the pads, so no mask is needed.
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                kinds = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (row, row_kinds) in enumerate(batch):
                    ids[i, : len(row)] = torch.tensor(row)
                    kinds[i, : len(row)] = torch.tensor(row_kinds)
                # Position t predicts token t + 1 (nothing is predicted after the last one).
                labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], pad_id)], dim=1)
                kinds = torch.cat([kinds[:, 1:], torch.zeros_like(kinds[:, :1])], dim=1)
                yield ids, labels, kinds

    return PackedRows()


def build_tiny_model(recipe: TinyRecipe, out_dir: str | Path) -> dict[str, Any]:
    """Train the tiny model of `recipe` and ``save_pretrained`` it (and its tokenizer) to `out_dir`.

    Returns build metrics (parameters, seconds, final loss). The global torch RNG is left as it
    was; all randomness comes from ``recipe.seed``.
    """
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from steerlight.data.prompts import get_preset
    from steerlight.tokenizer import build_tokenizer

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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
        model.train()
        module = _lightning_module(model, recipe)
        loader = DataLoader(
            _batches(recipe, examples, drills, sep, tokenizer.eos_token_id, tokenizer.pad_token_id),
            batch_size=None,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_steps=recipe.steps,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=True,
            enable_model_summary=False,
            gradient_clip_val=recipe.grad_clip,
            log_every_n_steps=10,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=str(out_dir),
        )
        trainer.fit(module, train_dataloaders=loader)
    final_loss = float(trainer.callback_metrics.get("loss", float("nan")))

    model.eval()
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
    }


# ---- evaluation ----------------------------------------------------------------------------


def evaluate(
    path: str | Path,
    rows: Sequence[dict[str, str]],
    exemplars: Sequence[dict[str, str]] = (),
    batch_size: int = 50,
    max_new_tokens: int = 160,
) -> list[dict[str, Any]]:
    """Greedy ``gsm8k``-preset completions of `rows` by the model at `path`, strictly scored.

    Returns one record per row: ``question``, ``completion``, ``pred``, ``gold``, ``correct``.
    """
    import torch

    from steerlight.answers import extract, gold_answer, is_correct
    from steerlight.data.prompts import get_preset
    from steerlight.model.generation import GenerationSettings, generate
    from steerlight.model.loading import load_model, load_tokenizer

    preset = get_preset("gsm8k")
    model = load_model(str(path))
    tokenizer = load_tokenizer(str(path))
    prompts = [preset.render(r["question"], exemplars) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    texts: dict[int, str] = {}
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            out = generate(
                model, tokenizer, enc["input_ids"], enc["attention_mask"], settings, preset.stop
            )
            texts.update(zip(idx, out.texts, strict=True))
    records = []
    for i, row in enumerate(rows):
        pred = extract(texts[i], mode="strict", form="hash")
        gold = gold_answer(row["answer"])
        records.append(
            {
                "question": row["question"],
                "completion": texts[i],
                "pred": pred,
                "gold": gold,
                "correct": is_correct(pred, gold),
            }
        )
    return records


def default_test_rows(recipe: TinyRecipe | None = None) -> list[dict[str, str]]:
    """The synthetic test rows of the data module's defaults (never trained on)."""
    from steerlight.data.synthetic import synthetic_splits

    recipe = recipe or TinyRecipe()
    return synthetic_splits(recipe.n_train, recipe.n_test, seed=recipe.data_seed)["test"]


def eval_exemplars(recipe: TinyRecipe, shots: int) -> list[dict[str, str]]:
    """`shots` seeded exemplars from the training rows, for k-shot evaluation."""
    return random.Random(f"{recipe.data_seed}-exemplars").sample(training_rows(recipe), shots)


# ---- command line --------------------------------------------------------------------------


def build_parser():
    """``python -m steerlight.tiny``'s flags; the ``--recipe.*`` help comes from `TinyRecipe`."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(
        prog="python -m steerlight.tiny",
        description="Build (once) and cache the embedded tiny GSM8K model, then print its folder. "
        "Every --recipe.* flag changes the cache key; the defaults are the embedded default.",
        default_env=False,
    )
    parser.add_argument(
        "--force", action="store_true", help="Rebuild even if a valid cached copy exists."
    )
    parser.add_argument(
        "--eval",
        type=int,
        default=0,
        help="Then score greedy exact match (strict '#### N') on the first N synthetic test "
        "questions (0: skip; 500: the whole default test split).",
    )
    parser.add_argument("--shots", type=int, default=0, help="Exemplars (from train) for --eval.")
    parser.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        type=int,
        default=160,
        help="Generation limit for --eval.",
    )
    parser.add_class_arguments(TinyRecipe, "recipe")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m steerlight.tiny``: build (or find) the tiny model, print its folder."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    recipe: TinyRecipe = parser.instantiate_classes(cfg).recipe
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = tiny_model_path(recipe, force=cfg.force)
    print(path, flush=True)
    if cfg.eval > 0:
        test = default_test_rows(recipe)[: cfg.eval]
        exemplars = eval_exemplars(recipe, cfg.shots)
        records = evaluate(path, test, exemplars, max_new_tokens=cfg.max_new_tokens)
        acc = sum(r["correct"] for r in records) / len(records)
        print(
            f"accuracy ({cfg.shots}-shot, strict, {len(records)} test questions): {acc:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

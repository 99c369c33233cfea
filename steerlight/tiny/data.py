"""The tiny model's training data: synthetic train problems packed into few-shot rows, drills.

Each training row packs several problems in the ``gsm8k`` preset's few-shot format::

    Question: {q1}\\nAnswer: {solution1}\\n\\nQuestion: {q2}\\nAnswer: {solution2} ... </s>

Every token carries a kind: `SOLUTION` (a solution token or the final ``</s>``), `QUESTION` (a
question token after the first of the row) or 0 (no loss). Drill rows rehearse the calculator
notes of the training solutions (`` <<14-9=5>>``) on their own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from steerlight.tiny.recipe import TinyRecipe

if TYPE_CHECKING:
    import torch

Row = tuple[list[int], list[int]]
"""A packed row: ``(input_ids, kinds)``."""

QUESTION, SOLUTION = 1, 2
"""Kinds of target tokens in a packed row (0: no loss, e.g. the blank line between problems)."""

_NOTE = re.compile(r"<<[^<>=]+=[^<>]+>>")


def training_rows(recipe: TinyRecipe) -> list[dict[str, str]]:
    """The synthetic train rows the model learns from: train minus the default val hold-out."""
    from steerlight.data.splits import holdout_indices
    from steerlight.data.synthetic import synthetic_splits

    train = synthetic_splits(recipe.n_train, recipe.n_test, seed=recipe.data_seed)["train"]
    if recipe.val_holdout <= 0:
        return train
    held = set(holdout_indices(len(train), recipe.val_holdout, recipe.data_seed))
    return [row for i, row in enumerate(train) if i not in held]


def _encode_examples(tokenizer: Any, rows: Sequence[dict[str, str]]) -> list[tuple[list[int], int]]:
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


def _separator_ids(tokenizer: Any) -> list[int]:
    """The ids of the blank line between two exemplars, as tokenized inside a few-shot prompt."""
    a = tokenizer("#### 1", add_special_tokens=False)["input_ids"]
    b = tokenizer("Question:", add_special_tokens=False)["input_ids"]
    ab = tokenizer("#### 1\n\nQuestion:", add_special_tokens=False)["input_ids"]
    if ab[: len(a)] != a or ab[len(ab) - len(b) :] != b:
        raise RuntimeError("tiny tokenizer: the few-shot separator does not tokenize on its own")
    return ab[len(a) : len(ab) - len(b)]


def pack_rows(
    examples: Sequence[tuple[list[int], int]],
    sep: Sequence[int],
    eos_id: int,
    seq_len: int,
    seed: int,
    problems: Sequence[float] = (),
) -> Iterator[Row]:
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
            # The first token of a row has no context to be predicted from: no loss on it.
            kinds += [0 if not ids else QUESTION] + [QUESTION] * (start - 1)
            kinds += [SOLUTION] * (len(ex) - start)
            ids += ex
        ids.append(eos_id)
        kinds.append(SOLUTION)
        yield ids, kinds


def _encode_drills(tokenizer: Any, rows: Sequence[dict[str, str]]) -> list[tuple[list[int], int]]:
    """The distinct calculator notes of the training solutions, e.g. `` <<14-9=5>>``, as
    (ids, index of the first token after ``=``): the arithmetic facts the drills rehearse."""
    notes = sorted({m.group() for r in rows for m in _NOTE.finditer(r["answer"])})
    eq = tokenizer.convert_tokens_to_ids("=")
    out = []
    for ids in tokenizer([" " + n for n in notes], add_special_tokens=False)["input_ids"]:
        if eq in ids:
            out.append((ids, len(ids) - ids[::-1].index(eq)))
    return out


def drill_rows(drills: Sequence[tuple[list[int], int]], seq_len: int, seed: int) -> Iterator[Row]:
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


def _row_len(row: Row) -> int:
    return len(row[0])


def batches(
    recipe: TinyRecipe,
    examples: Sequence[tuple[list[int], int]],
    drills: Sequence[tuple[list[int], int]],
    sep: Sequence[int],
    eos_id: int,
    pad_id: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`recipe.steps` batches ``(input_ids, labels, kinds)``: packed rows plus drill rows."""
    import torch

    rows = pack_rows(examples, sep, eos_id, recipe.seq_len, recipe.seed, recipe.row_problems)
    notes = drill_rows(drills, recipe.drill_len, recipe.seed) if recipe.drill_rows else None
    n_rows = recipe.batch_size - recipe.drill_rows
    pool: list[list[Row]] = []
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

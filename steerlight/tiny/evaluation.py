"""Scoring the tiny model: greedy ``gsm8k``-preset completions, strict exact match.

(Named ``evaluation`` rather than ``evaluate`` so the submodule is not shadowed by the
`evaluate` function that ``steerlight.tiny`` re-exports.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlight.tiny.data import training_rows
from steerlight.tiny.recipe import TinyRecipe


def evaluate(
    path: str | Path,
    rows: Sequence[dict[str, str]],
    exemplars: Sequence[dict[str, str]] = (),
    batch_size: int = 50,
    max_new_tokens: int = 160,
) -> list[dict[str, Any]]:
    """Greedy ``gsm8k``-preset completions of `rows` by the model at `path`, strictly scored.

    `path` is a model folder (e.g. from `tiny_model_path`), not the name ``tiny``.
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
    # Prompts of similar length together: little left padding per batch.
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

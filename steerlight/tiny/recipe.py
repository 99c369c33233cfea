"""`TinyRecipe`: every setting that determines the embedded tiny model, and its cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

BUILD_FORMAT = 2
"""Bumped whenever the training code changes what a recipe produces (it is part of the key).
2: the weights are stored in bfloat16 (trained in float32, rounded once at the end)."""


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
        # Lists from the command line or JSON become tuples, so equal recipes hash equally.
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

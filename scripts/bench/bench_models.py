"""The models the parts run on, and their questions.

Parts hook, activations and dac use a random-weight Llama (`random_bench`); random weights
never stop on their own, so its generation has a fixed length (`FixedLengthTokenizer`).
Parts trial and pruning need a model that stops by itself: the embedded trained ``tiny``
(`resolve_tiny`), or under ``--quick`` a tiny random one saved like a Hub model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import DTYPES
from torch import Tensor, nn

# -- parts hook, activations, dac: a random Llama ------------------------------------------------


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


def question_tokenizer(rows: list[dict[str, str]], vocab: int) -> Any:
    """A byte-level BPE trained on the rows (no tokenizer can be downloaded here)."""
    from steerlight.tiny.tokenizer import build_tokenizer

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
        num_key_value_heads=getattr(args, "kv_heads", None) or args.heads,
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


def left_padded(tokenizer: Any, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) of `texts`, padded as the tokenizer pads (left)."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def steering_vector(hidden: int, seed: int, norm: float = 4.0) -> Tensor:
    """A seeded random direction of the given norm (random weights have no meaningful one)."""
    g = torch.Generator().manual_seed(seed + 2)
    v = torch.randn(hidden, generator=g)
    return v / v.norm() * norm


# -- parts trial, pruning: a trained model that stops by itself ----------------------------------


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


def data_config(args: argparse.Namespace, n_val: int, batch: int) -> dict:
    """The `data:` section of parts trial and pruning: the tiny model's source and hold-out."""
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

"""Tiny random Hugging Face causal LMs and a tokenizer, built locally (no Hub) for tests.

Every model is created from a `transformers` config with random (seeded) weights and saved with
`save_pretrained` (safetensors), so tests load it back through
`AutoModelForCausalLM.from_pretrained(path)` exactly like a real model id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from steerlight.tiny.tokenizer import build_tokenizer

VOCAB_SIZE = 384
"""Model vocabulary size; at least as large as the trained tokenizer's vocabulary."""

HIDDEN = 32
HEADS = 4
FFN = 64
MAX_POS = 256
INIT = 0.1
"""Larger than the usual 0.02 so random logits are peaked enough for stable greedy ties."""


def _corpus() -> list[str]:
    """Arithmetic word problems in both prompt formats, from the synthetic generator (no
    GSM8K rows and no third-party exemplars in the project)."""
    from steerlight.data.synthetic import generate

    rows = generate(12, seed=7)
    hashed = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows[:6]]
    cot = [
        f"Q: {r['question']}\nA: {r['answer'].split('####')[0]} The answer is 5." for r in rows[6:]
    ]
    return hashed + cot


CORPUS = _corpus()

# Per-architecture config class and keyword arguments (hidden 32, 4 heads, 2-3 layers).
# `{layers}` is filled in by `build_tiny_model`; token ids are added there too.
_LLAMA_LIKE: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POS,
    "initializer_range": INIT,
}
ARCHS: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (config class, kwargs, name of the layer-count kwarg)
    "llama": ("LlamaConfig", {**_LLAMA_LIKE, "tie_word_embeddings": False}, "num_hidden_layers"),
    "qwen2": ("Qwen2Config", {**_LLAMA_LIKE, "tie_word_embeddings": True}, "num_hidden_layers"),
    "qwen3": ("Qwen3Config", {**_LLAMA_LIKE, "head_dim": 8}, "num_hidden_layers"),
    "mistral": ("MistralConfig", {**_LLAMA_LIKE, "sliding_window": 64}, "num_hidden_layers"),
    "gemma": ("GemmaConfig", {**_LLAMA_LIKE, "head_dim": 8}, "num_hidden_layers"),
    "gemma2": (
        "Gemma2Config",
        {**_LLAMA_LIKE, "head_dim": 8, "sliding_window": 16, "query_pre_attn_scalar": 8},
        "num_hidden_layers",
    ),
    "phi": ("PhiConfig", {**_LLAMA_LIKE, "num_key_value_heads": HEADS}, "num_hidden_layers"),
    "phi3": (
        "Phi3Config",
        {**_LLAMA_LIKE, "original_max_position_embeddings": MAX_POS},
        "num_hidden_layers",
    ),
    "stablelm": ("StableLmConfig", dict(_LLAMA_LIKE), "num_hidden_layers"),
    "gpt2": (
        "GPT2Config",
        {"n_embd": HIDDEN, "n_head": HEADS, "n_positions": MAX_POS, "initializer_range": INIT},
        "n_layer",
    ),
    "gpt_bigcode": (
        "GPTBigCodeConfig",
        {"n_embd": HIDDEN, "n_head": HEADS, "n_positions": MAX_POS, "initializer_range": INIT},
        "n_layer",
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        {
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "num_attention_heads": HEADS,
            "max_position_embeddings": MAX_POS,
            "initializer_range": INIT,
        },
        "num_hidden_layers",
    ),
    "gptj": (
        "GPTJConfig",
        {
            "n_embd": HIDDEN,
            "n_head": HEADS,
            "n_positions": MAX_POS,
            "rotary_dim": 4,
            "initializer_range": INIT,
        },
        "n_layer",
    ),
    "codegen": (
        "CodeGenConfig",
        {
            "n_embd": HIDDEN,
            "n_head": HEADS,
            "n_positions": MAX_POS,
            "n_ctx": MAX_POS,
            "rotary_dim": 4,
            "initializer_range": INIT,
        },
        "n_layer",
    ),
    "opt": (
        "OPTConfig",
        {
            "hidden_size": HIDDEN,
            "ffn_dim": FFN,
            "num_attention_heads": HEADS,
            "word_embed_proj_dim": HIDDEN,
            "max_position_embeddings": MAX_POS,
            "init_std": INIT,
        },
        "num_hidden_layers",
    ),
    "falcon": (
        "FalconConfig",
        {
            "hidden_size": HIDDEN,
            "num_attention_heads": HEADS,
            "max_position_embeddings": MAX_POS,
            "initializer_range": INIT,
        },
        "num_hidden_layers",
    ),
    "bloom": (
        "BloomConfig",
        {"hidden_size": HIDDEN, "n_head": HEADS, "initializer_range": INIT},
        "n_layer",
    ),
    "mpt": (
        "MptConfig",
        {"d_model": HIDDEN, "n_heads": HEADS, "max_seq_len": MAX_POS, "initializer_range": INIT},
        "n_layers",
    ),
}
"""Every architecture `build_tiny_model` can build."""

# Layer counts differ between architectures so a wrong layer-discovery rule shows up.
NUM_LAYERS: dict[str, int] = {arch: 2 + (i % 2) for i, arch in enumerate(ARCHS)}


def build_tokenizer_dir(path: str | Path) -> PreTrainedTokenizerFast:
    """Train the project's byte-level BPE on a fixed word-problem corpus and save it to `path`."""
    tokenizer = build_tokenizer(CORPUS, vocab_size=VOCAB_SIZE)
    if len(tokenizer) > VOCAB_SIZE:
        raise AssertionError(f"tokenizer has {len(tokenizer)} tokens > VOCAB_SIZE={VOCAB_SIZE}")
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_tiny_model(
    arch: str,
    path: str | Path,
    vocab_size: int = VOCAB_SIZE,
    *,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    num_layers: int | None = None,
    seed: int = 0,
) -> Path:
    """Create a tiny random `arch` model and `save_pretrained` it (safetensors) into `path`.

    Token ids default to the ones `steerlight.tokenizer.build_tokenizer` assigns
    (<pad>=0, <s>=1, </s>=2). Returns `path`.
    """
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {sorted(ARCHS)}")
    config_name, kwargs, layers_key = ARCHS[arch]
    config = getattr(transformers, config_name)(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **{layers_key: num_layers or NUM_LAYERS[arch]},
        **kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    path = Path(path)
    model.save_pretrained(str(path))
    return path


def build_all(root: str | Path, archs: list[str] | None = None) -> dict[str, Path]:
    """Build the tokenizer into `root/tokenizer` and every model into `root/<arch>`."""
    root = Path(root)
    build_tokenizer_dir(root / "tokenizer")
    return {arch: build_tiny_model(arch, root / arch) for arch in (archs or list(ARCHS))}

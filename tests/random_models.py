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
_BERT_LIKE: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_attention_heads": HEADS,
    "max_position_embeddings": MAX_POS,
    "initializer_range": INIT,
    "is_decoder": True,
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
    # ---- mixture of experts -------------------------------------------------------------------
    "mixtral": (
        "MixtralConfig",
        {**_LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},
        "num_hidden_layers",
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            **_LLAMA_LIKE,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": FFN // 2,
            "shared_expert_intermediate_size": FFN // 2,
        },
        "num_hidden_layers",
    ),
    # ---- sliding window next to full attention -------------------------------------------------
    "gemma3_text": (
        "Gemma3TextConfig",
        {
            **_LLAMA_LIKE,
            "head_dim": 8,
            "sliding_window": 8,  # shorter than the prompts: the window really slides
            "query_pre_attn_scalar": 8,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "num_hidden_layers",
    ),
    "gpt_neo": (
        "GPTNeoConfig",
        {
            "hidden_size": HIDDEN,
            "num_heads": HEADS,
            "max_position_embeddings": MAX_POS,
            "attention_types": [[["local", "global"], 1]],
            "window_size": 8,
            "initializer_range": INIT,
        },
        "num_layers",
    ),
    # ---- hybrids: linear attention / convolution / SSM layers next to attention ---------------
    "lfm2": (
        "Lfm2Config",
        {**_LLAMA_LIKE, "layer_types": ["conv", "full_attention"]},
        "num_hidden_layers",
    ),
    "lfm3": (
        "Lfm3Config",
        {**_LLAMA_LIKE, "head_dim": 8, "layer_types": ["conv", "full_attention"]},
        "num_hidden_layers",
    ),
    "falcon_h1": (  # every layer is both: attention and Mamba-2 side by side
        "FalconH1Config",
        {
            **_LLAMA_LIKE,
            "mamba_d_ssm": HIDDEN,
            "mamba_n_heads": 4,
            "mamba_d_state": 8,
            "mamba_n_groups": 1,
            "mamba_chunk_size": 8,
        },
        "num_hidden_layers",
    ),
    "qwen3_next": (  # gated DeltaNet + attention, MoE
        "Qwen3NextConfig",
        {
            **_LLAMA_LIKE,
            "head_dim": 8,
            "layer_types": ["linear_attention", "full_attention"],
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": FFN // 2,
            "shared_expert_intermediate_size": FFN // 2,
        },
        "num_hidden_layers",
    ),
    "minimax": (  # lightning (linear) attention in a cache class of its own
        "MiniMaxConfig",
        {
            **_LLAMA_LIKE,
            "head_dim": 8,
            "layer_types": ["linear_attention", "full_attention"],
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "block_size": 8,
        },
        "num_hidden_layers",
    ),
    # ---- pure state-space models ---------------------------------------------------------------
    "mamba": (
        "MambaConfig",
        {"hidden_size": HIDDEN, "state_size": 8, "expand": 2, "initializer_range": INIT},
        "num_hidden_layers",
    ),
    "falcon_mamba": (
        "FalconMambaConfig",
        {"hidden_size": HIDDEN, "state_size": 8, "expand": 2, "initializer_range": INIT},
        "num_hidden_layers",
    ),
    # ---- no KV cache: the whole sequence is recomputed at every step --------------------------
    "openai-gpt": (
        "OpenAIGPTConfig",
        {"n_embd": HIDDEN, "n_head": HEADS, "n_positions": MAX_POS, "initializer_range": INIT},
        "n_layer",
    ),
    "recurrent_gemma": (  # keeps its recurrent state in its own modules, returns no cache
        "RecurrentGemmaConfig",
        {
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "num_attention_heads": HEADS,
            "num_key_value_heads": 2,
            "lru_width": HIDDEN,
            "attention_window_size": 16,
            "block_types": ["recurrent", "attention"],
        },
        "num_hidden_layers",
    ),
    # ---- encoder stacks run as decoders: post-LN (BERT), pre-LN with a final LayerNorm ---------
    "bert": ("BertConfig", _BERT_LIKE, "num_hidden_layers"),
    "megatron-bert": ("MegatronBertConfig", _BERT_LIKE, "num_hidden_layers"),
    "xlm-roberta-xl": ("XLMRobertaXLConfig", _BERT_LIKE, "num_hidden_layers"),
}
"""Every architecture `build_tiny_model` can build."""

# Layer counts differ between architectures so a wrong layer-discovery rule shows up; those with
# one entry per layer in their config (layer types) have exactly that many.
NUM_LAYERS: dict[str, int] = {
    arch: len(kwargs.get("layer_types") or kwargs.get("block_types") or ()) or 2 + (i % 2)
    for i, (arch, (_, kwargs, _)) in enumerate(ARCHS.items())
}
NUM_LAYERS["gpt_neo"] = 2  # one local and one global layer (`attention_types`)


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


def ending_id(tokens: torch.Tensor) -> int:
    """The generated id that, made an end-of-sequence id, ends the rows of `tokens` at the most
    different steps (its first occurrence in each row; rows without it run to the end). Random
    weights never stop on their own: this makes rows stop at different steps."""

    def lengths(x: int) -> set[int]:
        hit = tokens == x
        return set(torch.where(hit.any(1), hit.int().argmax(1) + 1, tokens.shape[1]).tolist())

    return max(tokens.unique().tolist(), key=lambda x: len(lengths(x)))


class EarlyStop:
    """A tokenizer with one more EOS id (a frequent token), so rows stop at different steps."""

    def __init__(self, tokenizer: Any, eos: int) -> None:
        self._tok, self.eos_token_id, self.pad_token_id = tokenizer, eos, tokenizer.pad_token_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def early_stop_tokenizer(model: Any, tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor):
    """`tokenizer` with an EOS id that ends the rows of (ids, mask) at different steps
    (`ending_id` of a free run of 12 tokens)."""
    from steerlight.model.generation import GenerationSettings, generate

    free = generate(model, tokenizer, ids, mask, GenerationSettings(max_new_tokens=12)).tokens
    return EarlyStop(tokenizer, ending_id(free))

"""Batched generation with the KV cache: greedy by default, seeded sampling on request.

`generate` wraps ``model.generate`` so that decoding is defined by `GenerationSettings` alone:
the model's own ``generation_config`` (which may ship ``do_sample=True``, a temperature, a
``max_length``, ``top_k``, repetition penalties, ...) is set aside for the call, so no hidden
default leaks into an experiment and Transformers prints no "both max_new_tokens and
max_length" style warnings. Steering hooks (`steerlight.model.hooks.steer`) work unchanged
inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass
class GenerationSettings:
    """How completions are decoded."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens per row (EOS and stop strings end a row earlier)."""
    do_sample: bool = False
    """False: greedy (deterministic). True: sample with `temperature` and `top_p`."""
    temperature: float = 1.0
    """Softmax temperature when sampling (ignored for greedy)."""
    top_p: float = 1.0
    """Nucleus mass when sampling; 1.0 keeps the whole distribution (ignored for greedy)."""
    seed: int = 0
    """Seed of the sampling RNG; the global torch RNG is left untouched."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """The output of `generate`."""

    tokens: Tensor
    """(B, T_new) new token ids; rows that finished early are filled with the pad id."""
    texts: list[str]
    """Decoded new tokens (special tokens skipped), each cut at the first stop string."""


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS plus the EOS ids the model's generation config lists (<|eot_id|>...)."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def check_left_padded(input_ids: Tensor, attention_mask: Tensor) -> None:
    """Raise unless the prompts are a (B, T) batch whose rows all end in a real token."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            "input_ids and attention_mask must both be (batch, length); got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the batch must be left-padded (a row ends in padding)")


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any of `stop_strings`."""
    cut = len(text)
    for s in stop_strings:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def _generation_config(
    settings: GenerationSettings, pad_id: int, eos_ids: list[int], stop_strings: Sequence[str]
) -> GenerationConfig:
    defaults = GenerationConfig._get_default_generation_params()
    sampling = (
        {
            "do_sample": True,
            "temperature": float(settings.temperature),
            "top_p": float(settings.top_p),
            "top_k": 0,  # the global default top_k=50 would otherwise truncate silently
        }
        if settings.do_sample
        else {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": defaults["top_k"]}
    )
    return GenerationConfig(
        max_new_tokens=int(settings.max_new_tokens),
        num_beams=1,
        num_return_sequences=1,
        use_cache=True,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        min_length=0,
        length_penalty=1.0,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        stop_strings=list(stop_strings) or None,
        return_dict_in_generate=False,
        **sampling,
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings | None = None,
    stop_strings: Sequence[str] = (),
) -> Generation:
    """Generate completions for a left-padded batch.

    Args:
        model: a causal LM with ``generate`` (steering hooks may be active).
        tokenizer: used for pad/EOS ids, stop-string matching and decoding.
        input_ids: (B, T) left-padded prompt ids.
        attention_mask: (B, T), 0 on pads.
        settings: decoding settings (default `GenerationSettings()`).
        stop_strings: a row stops once its text contains one of them; texts are cut there.
    """
    settings = settings or GenerationSettings()
    check_left_padded(input_ids, attention_mask)
    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = _generation_config(settings, pad_id, eos_ids, stop_strings)
    device = input_ids.device
    fork_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []

    own_config = getattr(model, "generation_config", None)
    with torch.random.fork_rng(devices=fork_devices, enabled=settings.do_sample):
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        try:
            # Nothing from the model's generation_config fills gaps in ours (see module doc).
            model.generation_config = GenerationConfig()
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                tokenizer=tokenizer if stop_strings else None,
            )
        finally:
            model.generation_config = own_config
    tokens = out[:, input_ids.shape[1] :]
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    if stop_strings:
        texts = [cut_at_stop(t, stop_strings) for t in texts]
    return Generation(tokens=tokens, texts=texts)

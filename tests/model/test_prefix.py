"""Shared-prefix reuse (`steerlight.model.prefix`): the plain prefill's tokens, or a fallback."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
from random_models import ARCHS, early_stop_tokenizer

from steerlight.model import refill
from steerlight.model.generation import GenerationSettings, generate
from steerlight.model.prefix import MIN_PREFIX, PrefixCache, common_prefix
from steerlight.model.refill import refill_generate
from steerlight.steering.hooks import steer

SHARED = (
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
    "Answer: 3 + 4 = 7. #### 7\n\nQuestion: "
)
QUESTIONS = [
    "A farmer has 7 cows and buys",
    "How many legs do 3 ducks have?",
    "Sam reads 12 pages a day for",
    "What is 9 times 8?",
    "Ann has 5 pens. She gives 2 away and then buys 6 more, so now she",
]
PLAIN = GenerationSettings(max_new_tokens=10, prefix_reuse=False)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class _Counting(PrefixCache):
    """A `PrefixCache` that keeps every instance (so a test can read what it reused)."""

    made: list[PrefixCache] = []

    def __init__(self) -> None:
        super().__init__()
        self.made.append(self)


@pytest.fixture
def counted(monkeypatch):
    _Counting.made = []
    monkeypatch.setattr(refill, "PrefixCache", _Counting)
    return _Counting.made


def _batch(tokenizer, questions=QUESTIONS):
    enc = tokenizer([SHARED + q for q in questions], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_common_prefix_leaves_every_prompt_a_token_of_its_own():
    t = torch.tensor
    assert common_prefix([t([1, 2, 3, 4]), t([1, 2, 5])]) == 2
    assert common_prefix([t([1, 2, 3]), t([1, 2, 3, 4])]) == 2  # not the whole shorter prompt
    assert common_prefix([t([1, 2, 3])]) == 2
    assert common_prefix([t([7, 2]), t([1, 2])]) == 0
    assert common_prefix([t([5]), t([5, 6])]) == 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reuse_gives_the_plain_tokens_or_falls_back(
    arch, tiny_random_model, tiny_random_tokenizer, counted, caplog, monkeypatch
):
    """Every architecture: steered on the prompt's end or on every column, with rows joining
    at different steps (slots 2) and the columns every row pads dropped (min_trim 1: the pads
    in the middle are not such columns), the tokens equal the plain prefill's; where middle
    pads are not exact (sliding windows, state-space caches) the prefill is the plain one,
    logged."""
    monkeypatch.setattr(refill, "MIN_TRIM", 1)
    model = tiny_random_model(arch)
    ids, mask = _batch(tiny_random_tokenizer)
    tok = early_stop_tokenizer(model, tiny_random_tokenizer, ids, mask)
    hidden = model.config.get_text_config().hidden_size
    v = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    caplog.set_level(logging.INFO, logger="steerlight.model.prefix")
    cases = [("prompt_end+generated", 0.0), ("prompt_end+generated", 1.0), ("all", 1.0)]
    for positions, alpha in cases:
        runs = []
        for settings in (PLAIN, replace(PLAIN, prefix_reuse=True)):
            with steer(model, 0, v, alpha, positions, prompt_len=ids.shape[1]) as steering:
                runs.append(
                    refill_generate(model, tok, ids, mask, settings, (), 2, steering.columns)
                )
        assert torch.equal(runs[0].tokens, runs[1].tokens), (positions, alpha)
    used = [c for c in counted if c.reused_tokens]
    skipped = [c.unsupported for c in counted if c.unsupported]
    if counted:  # (models without a cache decode with `generate`, which has no prefill of its own)
        assert bool(used) != bool(skipped), "each call either reuses the prefix or says why not"
    if skipped:
        assert "no shared-prefix reuse" in caplog.text
    else:
        shared = common_prefix([row[m.bool()] for row, m in zip(ids, mask, strict=True)])
        assert shared >= MIN_PREFIX and all(c.prefilled_tokens == shared for c in used)


def test_reuse_equals_generate_and_steering_all_positions_steers_the_prefix(
    tiny_random_model, tiny_random_tokenizer, counted
):
    """On llama: the tokens are `generate`'s, and steering every column changes them (the
    shared prefix is run under the steering, not reused from an unsteered pass)."""
    model, tok = tiny_random_model("llama"), tiny_random_tokenizer
    ids, mask = _batch(tok)
    settings = replace(PLAIN, prefix_reuse=True)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    got, want = {}, {}
    for positions in ("prompt_end+generated", "all"):
        with steer(model, 0, v, 1.0, positions, prompt_len=ids.shape[1]) as steering:
            want[positions] = generate(model, tok, ids, mask, PLAIN)
            got[positions] = refill_generate(
                model, tok, ids, mask, settings, (), 3, steering.columns
            )
        assert torch.equal(got[positions].tokens, want[positions].tokens), positions
    assert not torch.equal(got["all"].tokens, got["prompt_end+generated"].tokens)
    assert all(c.reused_tokens > 0 for c in counted)


def test_short_shared_prefixes_are_prefilled_whole(
    tiny_random_model, tiny_random_tokenizer, counted
):
    model, tok = tiny_random_model("llama"), tiny_random_tokenizer
    enc = tok(QUESTIONS, return_tensors="pt", padding=True)
    settings = replace(PLAIN, prefix_reuse=True)
    refill_generate(model, tok, enc.input_ids, enc.attention_mask, settings)
    assert counted and all(c.prefilled_tokens == 0 and c.reused_tokens == 0 for c in counted)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2_moe", "gemma2"])
@pytest.mark.parametrize("how", ["mean", "last"])
def test_activation_reading_on_a_shared_prefix(arch, how, tiny_random_model, tiny_random_tokenizer):
    """Train-side reading (prompt + solution texts): the shared prefix runs once across
    batches, and every layer's activations over the solution equal the plain pass's (to float
    noise); where reuse is not exact (gemma2's window) the pass is the plain one."""
    from steerlight.steering.fit import solution_activations

    model, tok = tiny_random_model(arch), tiny_random_tokenizer
    texts = [SHARED + q + " The answer is 4." for q in QUESTIONS]
    lens = [len(tok(SHARED + q)["input_ids"]) for q in QUESTIONS]
    plain = solution_activations(model, tok, texts, lens, how)
    prefixes = PrefixCache()
    fast = torch.cat(
        [
            solution_activations(model, tok, texts[i : i + 2], lens[i : i + 2], how, True, prefixes)
            for i in range(0, len(texts), 2)
        ]
    )
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    if arch == "gemma2":
        assert prefixes.unsupported and prefixes.reused_tokens == 0
    else:
        shared = common_prefix([torch.tensor(tok(t)["input_ids"]) for t in texts])
        assert prefixes.prefilled_tokens >= MIN_PREFIX  # once, for all three batches
        assert prefixes.reused_tokens == prefixes.prefilled_tokens * len(texts)
        assert prefixes.prefilled_tokens <= shared

"""Row refill (`refill_generate`) gives padded batching's tokens, steered or not."""

from __future__ import annotations

import pytest
import torch
from random_models import early_stop_tokenizer

from steerlight.model import refill
from steerlight.model.generation import GenerationSettings, cat_generations, generate, split_rows
from steerlight.model.refill import joinable, refill_generate
from steerlight.steering.hooks import steer

PROMPTS = [
    "Question: How many cows does the farmer have now?",
    "Q: 3 + 2 =",
    "A farmer has 7 cows and buys",
    "Tom reads",
    "The answer is 12 because 3 times 4 is",
]
ARCHS = ["llama", "gpt2", "gemma2", "lfm2", "falcon_h1", "mamba"]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _batch(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("min_trim", [refill.MIN_TRIM, 1])
def test_refill_gives_padded_batchings_tokens(
    arch, alpha, min_trim, tiny_random_model, tiny_random_tokenizer, monkeypatch
):
    """Rows stop at different steps, slots are refilled, and (min_trim=1) the columns every
    row pads are dropped: the tokens are still those of padded batching, steered or not."""
    monkeypatch.setattr(refill, "MIN_TRIM", min_trim)
    model = tiny_random_model(arch)
    ids, mask = _batch(tiny_random_tokenizer)
    settings = GenerationSettings(max_new_tokens=12)
    hidden = model.config.get_text_config().hidden_size
    v = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()  # strong enough to change tokens, weak enough to keep rows apart
    with steer(model, 0, v, alpha, prompt_len=ids.shape[1]):
        tok = early_stop_tokenizer(model, tiny_random_tokenizer, ids, mask)
        want = generate(model, tok, ids, mask, settings)
    with steer(model, 0, v, alpha, prompt_len=ids.shape[1]) as steering:
        got = refill_generate(model, tok, ids, mask, settings, slots=2, columns=steering.columns)
    if alpha:  # the steered columns matter: a wrong per-row width would show
        assert not torch.equal(want.tokens, generate(model, tok, ids, mask, settings).tokens)
    lengths = (want.tokens != tok.pad_token_id).sum(1)
    assert lengths.min() < lengths.max(), "rows must stop at different steps"
    assert torch.equal(got.tokens, want.tokens)
    assert got.texts == want.texts


def test_refill_cuts_at_stop_strings_like_generate(tiny_random_model, tiny_random_tokenizer):
    model = tiny_random_model("llama")
    ids, mask = _batch(tiny_random_tokenizer)
    settings = GenerationSettings(max_new_tokens=12)
    free = generate(model, tiny_random_tokenizer, ids, mask, settings).texts
    stop = next(t[2:4] for t in free if len(t.strip()) > 4)  # a string some rows produce
    want = generate(model, tiny_random_tokenizer, ids, mask, settings, stop_strings=[stop])
    got = refill_generate(model, tiny_random_tokenizer, ids, mask, settings, [stop], slots=3)
    assert torch.equal(got.tokens, want.tokens) and got.texts == want.texts


def test_what_refill_cannot_decode_takes_generate_slots_rows_at_a_time(
    tiny_random_model, tiny_random_tokenizer
):
    """Sampling and models without a cache: `generate` on each group of `slots` rows, as if
    those rows were collated alone (steered at each group's own prompt width)."""
    tok = tiny_random_tokenizer
    ids, mask = _batch(tok)
    groups = list(split_rows(ids, mask, 2))
    for group, prompts in zip(groups, [PROMPTS[:2], PROMPTS[2:4], PROMPTS[4:]], strict=True):
        alone = tok(prompts, return_tensors="pt", padding=True)
        assert torch.equal(group[0], alone.input_ids) and torch.equal(
            group[1], alone.attention_mask
        )
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    for arch, settings, alpha in [
        ("llama", GenerationSettings(max_new_tokens=6, do_sample=True, seed=3), 0.0),
        ("openai-gpt", GenerationSettings(max_new_tokens=6), 0.0),
        ("openai-gpt", GenerationSettings(max_new_tokens=6), 4.0),
    ]:
        model = tiny_random_model(arch)
        want = []
        for g_ids, g_mask in groups:
            with steer(model, 0, v, alpha, prompt_len=g_ids.shape[1]):
                want.append(generate(model, tok, g_ids, g_mask, settings))
        want = cat_generations(want, tok.pad_token_id)
        with steer(model, 0, v, alpha, prompt_len=ids.shape[1]) as steering:
            got = refill_generate(
                model, tok, ids, mask, settings, slots=2, columns=steering.columns
            )
        assert torch.equal(got.tokens, want.tokens) and got.texts == want.texts, arch
    # and the width matters: the narrowest group steered at the whole batch's width differs
    i = min(range(len(groups)), key=lambda i: groups[i][0].shape[1])
    assert groups[i][0].shape[1] < ids.shape[1]
    with steer(model, 0, v, alpha, prompt_len=ids.shape[1]):
        wrong = generate(model, tok, *groups[i], settings).tokens
    rows = slice(2 * i, 2 * i + len(wrong))
    assert not torch.equal(wrong, got.tokens[rows, : wrong.shape[1]])


def test_joinable_caches(tiny_random_model, tiny_random_tokenizer):
    ids, mask = _batch(tiny_random_tokenizer)
    with torch.no_grad():
        llama = tiny_random_model("llama")(input_ids=ids, attention_mask=mask, use_cache=True)
        minimax = tiny_random_model("minimax")(input_ids=ids, attention_mask=mask, use_cache=True)
    assert joinable(llama.cache) and not joinable(minimax.cache)


def test_per_row_prompt_widths_steer_each_rows_own_columns(
    tiny_random_model, tiny_random_tokenizer
):
    """A (rows,) prompt_len steers each row from its own column: row i as if alone."""
    model = tiny_random_model("llama")
    ids, mask = _batch(tiny_random_tokenizer)
    v = torch.ones(model.config.hidden_size)
    widths = torch.tensor([ids.shape[1], 3, ids.shape[1], 5, 2])
    with torch.no_grad():
        with steer(model, 0, v, 1.0, "generated", prompt_len=widths):
            both = model(input_ids=ids, attention_mask=mask).logits
        for i, width in enumerate(widths.tolist()):
            with steer(model, 0, v, 1.0, "generated", prompt_len=width):
                alone = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits
            torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rows"), steer(model, 0, v, 1.0, prompt_len=3) as s:
        s.columns.prompt_len = torch.tensor([[3]])
    with pytest.raises(ValueError, match="prompt widths"), torch.no_grad():
        with steer(model, 0, v, 1.0, prompt_len=torch.tensor([3, 3])):
            model(input_ids=ids, attention_mask=mask)


def test_per_row_strengths_take_generate(tiny_random_model, tiny_random_tokenizer):
    model = tiny_random_model("llama")
    ids, mask = _batch(tiny_random_tokenizer)
    settings = GenerationSettings(max_new_tokens=6)
    alpha = torch.linspace(0, 2, len(PROMPTS))
    v = torch.ones(model.config.hidden_size)
    with steer(model, 0, v, alpha, prompt_len=ids.shape[1]) as steering:
        want = generate(model, tiny_random_tokenizer, ids, mask, settings)
        got = refill_generate(
            model,
            tiny_random_tokenizer,
            ids,
            mask,
            settings,
            slots=2,
            columns=steering.columns,
            fixed_rows=steering.per_row,
        )
    assert torch.equal(got.tokens, want.tokens)


@pytest.mark.parametrize("arch", ["llama", "mamba"])
@pytest.mark.parametrize("positions", ["generated", "prompt_end+generated", "all"])
def test_steered_generate_is_unchanged_by_refill(
    arch, positions, tiny_random_model, tiny_random_tokenizer, monkeypatch
):
    """The module's CAA path (`steered_generate`, now on refill) gives `steer` + `generate`'s
    tokens for every rule of steered positions (Mamba: columns counted, no mask)."""
    from steerlight.steering import apply
    from steerlight.steering.dac import DACSettings

    monkeypatch.setattr(refill, "MIN_TRIM", 1)
    model = tiny_random_model(arch)
    ids, mask = _batch(tiny_random_tokenizer)
    settings = GenerationSettings(max_new_tokens=10)
    hidden = model.config.get_text_config().hidden_size
    v = torch.randn(hidden, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    with steer(model, 0, v, 1.0, positions, prompt_len=ids.shape[1]):
        tok = early_stop_tokenizer(model, tiny_random_tokenizer, ids, mask)
        want = generate(model, tok, ids, mask, settings)
    config = apply.SteeringConfig("caa", 0, 1.0, positions, "none", DACSettings())
    got = apply.steered_generate(model, tok, ids, mask, config, v, settings, ())
    assert torch.equal(got.tokens, want.tokens)

"""Batched generation: greedy determinism, seeded sampling, stop strings, EOS, config isolation."""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig

from steerlight.model.generation import Generation, GenerationSettings, cut_at_stop, generate

PROMPTS = [
    "Question: How many cows does the farmer have now?",
    "Q: 3 + 2 =",
    "Answer: Betty has 100 / 2 dollars",
]
REPLACEMENT = "\ufffd"  # a partial byte-level token decodes to this
STOP_ARCHS = ("llama", "gpt2", "falcon", "qwen2", "opt", "bloom")

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@cache
def _load(path: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


@pytest.fixture
def llama(tiny_random_paths):
    return _load(tiny_random_paths["llama"])


@pytest.fixture
def batch(tiny_random_tokenizer):
    enc = tiny_random_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_settings_defaults_and_validation():
    s = GenerationSettings()
    assert (s.max_new_tokens, s.do_sample, s.temperature, s.top_p, s.seed) == (
        256,
        False,
        1.0,
        1.0,
        0,
    )
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(do_sample=True, temperature=0.0)


def test_greedy_is_deterministic_and_matches_argmax(llama, tiny_random_tokenizer, batch):
    ids, mask = batch
    settings = GenerationSettings(max_new_tokens=5)
    a = generate(llama, tiny_random_tokenizer, ids, mask, settings)
    b = generate(llama, tiny_random_tokenizer, ids, mask, settings)
    assert isinstance(a, Generation)
    assert a.tokens.dtype == torch.long and a.tokens.shape == (len(PROMPTS), 5)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert a.texts == tiny_random_tokenizer.batch_decode(a.tokens, skip_special_tokens=True)
    # the first two tokens are the argmax of a plain forward (no cache involved)
    with torch.no_grad():
        first = llama(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
        ids2 = torch.cat([ids, first[:, None]], 1)
        mask2 = torch.cat([mask, torch.ones_like(first[:, None])], 1)
        second = llama(input_ids=ids2, attention_mask=mask2).logits[:, -1].argmax(-1)
    assert torch.equal(a.tokens[:, 0], first)
    assert torch.equal(a.tokens[:, 1], second)


def test_sampling_is_seeded_and_leaves_global_rng_alone(llama, tiny_random_tokenizer, batch):
    ids, mask = batch

    def sample(seed: int) -> torch.Tensor:
        settings = GenerationSettings(
            max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, seed=seed
        )
        return generate(llama, tiny_random_tokenizer, ids, mask, settings).tokens

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b, c = sample(7), sample(7), sample(8)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    greedy = generate(
        llama, tiny_random_tokenizer, ids, mask, GenerationSettings(max_new_tokens=8)
    ).tokens
    assert not torch.equal(a, greedy)


def _stop_string(text: str) -> str | None:
    """A 2-character piece of `text` (not at its start, no partial-byte characters)."""
    for i in range(1, len(text) - 1):
        piece = text[i : i + 2]
        if REPLACEMENT not in text[: i + 2] and piece.strip():
            return piece
    return None


def test_stop_strings_cut_completions(tiny_random_paths, tiny_random_tokenizer, batch):
    ids, mask = batch
    tok = tiny_random_tokenizer
    settings = GenerationSettings(max_new_tokens=12)
    for arch in STOP_ARCHS:  # find a random model whose greedy output has printable text
        model = _load(tiny_random_paths[arch])
        full = generate(model, tok, ids, mask, settings)
        row = next((i for i, t in enumerate(full.texts) if _stop_string(t)), None)
        if row is not None:
            break
    assert row is not None, "no random model produced printable text to cut"
    stop = _stop_string(full.texts[row])
    cut = full.texts[row][: full.texts[row].find(stop)]

    got = generate(model, tok, ids, mask, settings, stop_strings=["NEVER-SEEN", stop])
    assert got.texts[row] == cut
    assert stop not in got.texts[row]
    for i, text in enumerate(full.texts):  # other rows: cut the same way (or not at all)
        assert got.texts[i] == cut_at_stop(text, [stop])
    # generation really stopped for that row: the tokens after the stop are padding
    stopped = got.tokens[row]
    decoded = [tok.decode(stopped[: n + 1]) for n in range(len(stopped))]
    end = next(n for n, text in enumerate(decoded) if stop in text)
    assert (stopped[end + 1 :] == tok.pad_token_id).all()
    assert end + 1 < settings.max_new_tokens


def test_cut_at_stop():
    assert cut_at_stop("12 apples\nQuestion: next", ["Question:", "\n\n"]) == "12 apples\n"
    assert cut_at_stop("a\n\nQuestion:", ["Question:", "\n\n"]) == "a"
    assert cut_at_stop("nothing here", ["Question:"]) == "nothing here"
    assert cut_at_stop("x", ["", "y"]) == "x"


def test_eos_finishes_a_row_and_pads_after(tiny_random_paths, tiny_random_tokenizer, batch):
    ids, mask = batch
    model = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["llama"])).eval()
    settings = GenerationSettings(max_new_tokens=8)
    full = generate(model, tiny_random_tokenizer, ids, mask, settings).tokens
    eos = int(full[0, 2])  # make the third greedy token of row 0 an extra EOS id (e.g. <|eot_id|>)
    first = int((full[0] == eos).nonzero()[0])
    model.generation_config.eos_token_id = [tiny_random_tokenizer.eos_token_id, eos]
    got = generate(model, tiny_random_tokenizer, ids, mask, settings).tokens
    assert torch.equal(got[0, : first + 1], full[0, : first + 1])
    assert (got[0, first + 1 :] == tiny_random_tokenizer.pad_token_id).all()


def test_model_generation_config_defaults_do_not_leak(
    tiny_random_paths, tiny_random_tokenizer, batch, capfd
):
    ids, mask = batch
    model = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["gpt2"])).eval()
    settings = GenerationSettings(max_new_tokens=10)
    clean = generate(model, tiny_random_tokenizer, ids, mask, settings)
    odd = GenerationConfig(
        do_sample=True,
        temperature=0.3,
        top_k=3,
        top_p=0.5,
        max_length=12,
        min_new_tokens=9,
        repetition_penalty=3.0,
        no_repeat_ngram_size=1,
        bad_words_ids=[[int(clean.tokens[0, 0])]],
        num_beams=2,
    )
    model.generation_config = odd
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = generate(model, tiny_random_tokenizer, ids, mask, settings)
        sampled = generate(
            model,
            tiny_random_tokenizer,
            ids,
            mask,
            GenerationSettings(max_new_tokens=4, do_sample=True),
        )
    out, err = capfd.readouterr()
    assert torch.equal(got.tokens, clean.tokens)
    assert sampled.tokens.shape == (len(PROMPTS), 4)
    assert model.generation_config is odd  # restored
    assert [str(w.message) for w in caught] == []
    assert "warn" not in (out + err).lower() and "max_length" not in out + err, out + err


def test_right_padding_rejected(llama, tiny_random_tokenizer, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match="left-padded"):
        generate(
            llama,
            tiny_random_tokenizer,
            ids.flip(1),
            mask.flip(1),
            GenerationSettings(max_new_tokens=2),
        )


# ---- cache plumbing shared with DAC ---------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma2", "lfm2", "falcon_h1", "mamba"])
def test_repeat_cache_rows_equals_running_the_rows(
    arch, tiny_random_model, tiny_random_tokenizer, batch
):
    """Repeating a cache's rows (attention, sliding-window, conv, SSM and hybrid layers) gives
    the cache of the repeated prompts: the next step's logits agree."""
    from steerlight.model.generation import ChunkForward, repeat_cache_rows

    model = tiny_random_model(arch)
    ids, mask = batch
    rows = torch.tensor([0, 0, 1, 2, 2, 1])
    forward = ChunkForward(model, padded=True)
    with torch.no_grad():
        _, cache = forward(ids[:, :-1], mask[:, :-1], None, ids.shape[1] - 1)
        repeated = repeat_cache_rows(cache, rows)
        assert repeated is not None and repeated is not cache
        got, _ = forward(ids[rows], mask[rows], repeated, 1)
        _, fresh = forward(ids[rows, :-1], mask[rows, :-1], None, ids.shape[1] - 1)
        want, _ = forward(ids[rows], mask[rows], fresh, 1)
        again, _ = forward(ids, mask, cache, 1)  # the original keeps its own rows
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, want[[0, 2, 3]], rtol=1e-4, atol=1e-4)


def test_repeat_cache_rows_refuses_a_models_own_cache(tiny_random_model, batch):
    """MiniMax keeps its linear-attention state beside the layers, where a reorder misses it."""
    from steerlight.model.generation import repeat_cache_rows

    model = tiny_random_model("minimax")
    ids, mask = batch
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).cache
    assert type(cache).__name__ == "MiniMaxCache"
    assert repeat_cache_rows(cache, torch.tensor([0, 0])) is None


def test_chunk_forward_learns_a_model_keeps_no_cache(
    tiny_random_model, tiny_random_tokenizer, batch, caplog
):
    from steerlight.model.generation import ChunkForward

    ids, mask = batch
    for arch, takes_cache in (("openai-gpt", False), ("recurrent_gemma", True)):
        model = tiny_random_model(arch)
        forward = ChunkForward(model, padded=True)
        assert forward.cacheless is not takes_cache  # openai-gpt: known from its signature
        with caplog.at_level("INFO", logger="steerlight.model.generation"), torch.no_grad():
            caplog.clear()
            logits, cache = forward(ids, mask, None, ids.shape[1])
            forward(ids, mask, None, ids.shape[1])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate makes them
            full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        assert cache is None and forward.cacheless
        torch.testing.assert_close(logits, full)
        # steerlight's own note only (a library's one-time deprecation notice may come too)
        notes = [r.getMessage() for r in caplog.records if r.name == "steerlight.model.generation"]
        assert notes == (
            [f"{arch} returns no cache: every step recomputes the whole sequence"]
            if takes_cache
            else []
        )


def _first_stop(row: list[int], stopped) -> int | None:
    """The first prefix length at which `stopped(prefix)` holds (as a decoding loop checks)."""
    return next((k for k in range(1, len(row) + 1) if stopped(row[:k])), None)


def test_stop_matcher_stops_where_a_full_decode_does(tiny_random_tokenizer):
    """Decoding only a row's last tokens finds the first stop string at the same token as
    decoding the whole row, also around special tokens and multi-byte characters."""
    from steerlight.model.generation import StopMatcher

    tok = tiny_random_tokenizer
    g = torch.Generator().manual_seed(0)
    specials = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    texts = [
        "Natalia sold clips to 48 of her friends in April. " * 3 + "\n\nQuestion: next",
        "Weng earns $12 an hour for babysitting; 50 minutes: 10. Q. The answer is 10",
        "Prix: 12 € — café, naïve 🐄🐄 déjà vu " * 2 + "ANSWER",
    ]
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    for row in list(rows):  # each with special tokens (which decode to nothing) spliced in
        noisy = list(row)
        for _ in range(12):
            i = int(torch.randint(len(noisy) + 1, (1,), generator=g))
            noisy[i:i] = [specials[int(torch.randint(3, (1,), generator=g))]] * 3
        rows.append(noisy)
    rows.append(torch.randint(3, len(tok), (120,), generator=g).tolist())  # any bytes at all

    checked = 0
    for stops in (["\n\nQuestion:"], ["Q"], ["The answer is"], ["🐄", "vu"], ["ANSWER"], ["zz"]):
        fast = StopMatcher(tok, stops)

        def full(prefix: list[int], stops=stops) -> bool:
            return any(s in tok.decode(prefix, skip_special_tokens=True) for s in stops)

        for row in rows:
            want = _first_stop(row, full)
            assert _first_stop(row, fast) == want, (stops, tok.decode(row))
            checked += want is not None and want > fast.tail
    assert checked >= 6  # stops found beyond the decoded tail's length, so the tail mattered
    assert not StopMatcher(tok, [])(rows[0]) and not StopMatcher(tok, [""])(rows[0])

"""DAC: the strength rule by hand, the 3-cache generation against a naive no-cache reference."""

from __future__ import annotations

import math

import pytest
import torch
from naive_steering import naive_dac
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from steerlight.model.generation import GenerationSettings, cut_at_stop, generate
from steerlight.steering.dac import DACGeneration, dac_generate
from steerlight.steering.dac_strength import dac_alpha, dac_kl, nucleus_mask
from steerlight.steering.hooks import steer
from steerlight.steering.icl import icl_step_vectors

PROMPTS = [
    "Question: How many cows does the farmer have now?",
    "Q: 3 + 2 =",
    "A farmer has 7 cows and buys 5 more each week",
]
LAYER = 1
HIDDEN = 32

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def batch(tiny_random_tokenizer):
    enc = tiny_random_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    lengths = enc.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == 3 and (enc.attention_mask[:, 0] == 0).any()
    return enc.input_ids, enc.attention_mask


def _vector(seed: int, norm: float, rows: int | None = None) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*((rows,) if rows else ()), HIDDEN, generator=g)
    return v * norm / v.norm(dim=-1, keepdim=True)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---- the strength rule ----------------------------------------------------------------------

P = [0.5, 0.3, 0.15, 0.05]
Q = [0.1, 0.25, 0.6, 0.05]
# top_p = 0.7: nucleus(p) = {0, 1} (0.5 < 0.7 <= 0.8), nucleus(q) = {2, 1} (0.6 < 0.7 <= 0.85),
# U = {0, 1, 2}; both hold 0.95 of their mass on U, so the renormalisers cancel in the log ratio:
# KL(p||q) on U = (0.5 ln(0.5/0.1) + 0.3 ln(0.3/0.25) + 0.15 ln(0.15/0.6)) / 0.95 = 0.685759
KL_PQ = (0.5 * math.log(5) + 0.3 * math.log(1.2) + 0.15 * math.log(0.25)) / 0.95
# the other direction on the same U: (0.1 ln(0.1/0.5) + 0.25 ln(0.25/0.3) + 0.6 ln 4) / 0.95
# = 0.658160
KL_QP = (0.1 * math.log(0.2) + 0.25 * math.log(0.25 / 0.3) + 0.6 * math.log(4)) / 0.95


def _logits(*dists: list[float]) -> Tensor:
    return torch.tensor(dists).log() + 3.0  # any shift: logits, not probabilities


def test_dac_alpha_matches_hand_computation():
    assert KL_PQ == pytest.approx(0.685759, abs=1e-6)
    assert KL_QP == pytest.approx(0.658160, abs=1e-6)
    p, q = _logits(P, Q, P), _logits(Q, P, P)
    assert nucleus_mask(p.softmax(-1), 0.7)[0].tolist() == [True, True, False, False]
    assert nucleus_mask(q.softmax(-1), 0.7)[0].tolist() == [False, True, True, False]

    kl = dac_kl(p, q, top_p=0.7)
    assert kl.tolist() == pytest.approx([KL_PQ, KL_QP, 0.0], abs=1e-5)
    alpha = dac_alpha(p, q, top_p=0.7, alpha_max=2.0)
    assert alpha.shape == (3,) and alpha.tolist() == pytest.approx([KL_PQ, KL_QP, 0.0], abs=1e-5)
    # batchmean divides by |U| = 3 (|U| = 2 for identical p, q: {0, 1}, KL 0 anyway)
    mean = dac_alpha(p, q, top_p=0.7, alpha_max=2.0, batchmean=True)
    assert mean.tolist() == pytest.approx([KL_PQ / 3, KL_QP / 3, 0.0], abs=1e-5)
    # clip at alpha_max, and at 0 from below; a negative alpha_max keeps its sign
    assert dac_alpha(p, q, 0.7, alpha_max=0.5).tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert dac_alpha(p, q, 0.7, alpha_max=-0.5).tolist() == pytest.approx([-0.5, -0.5, 0.0])
    assert dac_alpha(p, q, 0.7, alpha_max=0.0).tolist() == [0.0, 0.0, 0.0]
    # top_p = 1: U is the whole vocabulary
    full = sum(a * math.log(a / b) for a, b in zip(P, Q, strict=True))
    assert dac_kl(p[:1], q[:1], top_p=1.0).item() == pytest.approx(full, abs=1e-5)


def test_nucleus_never_empty_even_for_tiny_top_p():
    p, q = _logits(P), _logits(Q)
    for top_p in (0.0, 1e-9):
        assert nucleus_mask(p.softmax(-1), top_p)[0].tolist() == [True, False, False, False]
        # U = {0, 2}: p_U = (0.5, 0.15) / 0.65, q_U = (0.1, 0.6) / 0.7
        pu, qu = [0.5 / 0.65, 0.15 / 0.65], [0.1 / 0.7, 0.6 / 0.7]
        expected = sum(a * math.log(a / b) for a, b in zip(pu, qu, strict=True))
        assert dac_kl(p, q, top_p).item() == pytest.approx(expected, abs=1e-5)
        assert dac_kl(p, q, top_p, batchmean=True).item() == pytest.approx(expected / 2, abs=1e-5)
    logits = torch.randn(64, 300) * 0.01  # nearly flat: any float rounding would show
    for top_p in (0.0, 1e-12, 0.5):
        assert (nucleus_mask(logits.softmax(-1), top_p).sum(-1) >= 1).all()
        assert torch.isfinite(dac_kl(logits, logits.flip(-1), top_p)).all()


def _sorted_nucleus(probs: Tensor, top_p: float) -> Tensor:
    """The definition, by a full sort in float64: keep a token while the mass before it < top_p."""
    sorted_p, order = probs.double().sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p
    keep = before < top_p
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


@pytest.mark.parametrize("vocab", [7, 384, 5000])
def test_nucleus_matches_a_full_sort(vocab):
    g = torch.Generator().manual_seed(vocab)
    # distinct probabilities (no ties to break), from nearly flat to very peaked rows
    steps = torch.tensor([0.0005, 0.002, 0.01, 0.05, 0.3, 2.0])[:, None]
    logits = torch.stack([torch.randperm(vocab, generator=g) for _ in steps]).float() * steps
    logits[1, : vocab // 3] = float("-inf")  # masked tokens
    probs = logits.softmax(-1)
    for top_p in (1e-9, 0.2, 0.5, 0.9, 0.99):
        got = nucleus_mask(probs, top_p)
        assert torch.equal(got, _sorted_nucleus(probs, top_p)), top_p
    assert nucleus_mask(probs, 1.0).all()


# ---- the 3-cache generation against the naive reference (three full forwards per token) -----


CASES = [
    # arch, per-step vectors, positions, batchmean, vector norm, alpha_max
    ("llama", False, "prompt_end+generated", False, 30.0, 0.3),
    ("llama", True, "generated", False, 30.0, 0.2),
    ("gpt2", True, "prompt_end+generated", False, 30.0, 0.3),
    ("falcon", False, "all", False, 30.0, 0.2),
    ("gemma2", False, "prompt_end+generated", False, 1000.0, 0.3),  # sliding window 16 < 32
    # no padding: the last 9 columns of the batch (the shortest prompt's length)
    ("llama-unpadded", True, "prompt_end+generated", False, 30.0, 0.3),
    # random models are flat (|U| ~ 300 of 384 tokens, so KL / |U| ~ 1e-3): batchmean is run
    # on a llama whose lm_head is scaled up, peaked like a trained model (|U| ~ 1 to 20)
    ("llama-peaked", False, "prompt_end+generated", True, 8.0, 1.0),
]


@pytest.mark.parametrize(("arch", "per_step", "positions", "batchmean", "norm", "alpha_max"), CASES)
def test_matches_naive_reference_token_for_token(
    arch,
    per_step,
    positions,
    batchmean,
    norm,
    alpha_max,
    tiny_random_paths,
    tiny_random_model,
    tiny_random_tokenizer,
    batch,
):
    ids, mask = batch
    tok = tiny_random_tokenizer
    if arch == "llama-peaked":
        model = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["llama"])).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    else:
        model = tiny_random_model(arch.removesuffix("-unpadded"))
    if arch.endswith("-unpadded"):
        shortest = int(mask.sum(1).min())  # cut every prompt to the shortest: no padding
        ids, mask = ids[:, -shortest:], mask[:, -shortest:]
        assert mask.all() and shortest >= 5
    steps = 10
    vectors = _vector(1, norm, rows=4) if per_step else _vector(1, norm)[None]
    settings = GenerationSettings(max_new_tokens=steps)
    kwargs = {"top_p": 0.9, "alpha_max": alpha_max, "batchmean": batchmean, "positions": positions}

    got = dac_generate(
        model,
        tok,
        ids,
        mask,
        LAYER,
        None if per_step else vectors[0],
        settings,
        step_vectors=vectors if per_step else None,
        **kwargs,
    )
    want_tokens, want_alphas = naive_dac(
        model, ids, mask, vectors, layer=LAYER, steps=steps, pad=tok.pad_token_id, **kwargs
    )
    assert isinstance(got, DACGeneration)
    assert torch.equal(got.tokens, want_tokens)
    torch.testing.assert_close(got.alphas, want_alphas, atol=1e-5, rtol=1e-4, equal_nan=True)
    assert got.texts == tok.batch_decode(got.tokens, skip_special_tokens=True)

    # alpha_t really is dynamic: it varies, is clipped at alpha_max at some steps and lies
    # strictly between 0 and alpha_max at others
    live = got.alphas[~got.alphas.isnan()]
    assert live.std() > 1e-2
    assert ((live > 0) & (live < alpha_max)).any()
    assert (live == alpha_max).any()
    # and steering changes the output
    plain = generate(model, tok, ids, mask, settings).tokens
    assert not torch.equal(got.tokens, plain)


def test_alpha_max_zero_is_exactly_unsteered(tiny_random_model, tiny_random_tokenizer, batch):
    ids, mask = batch
    tok = tiny_random_tokenizer
    settings = GenerationSettings(max_new_tokens=12)
    for arch in ("llama", "gpt2", "falcon", "bloom", "opt", "gemma2"):
        model = tiny_random_model(arch)
        plain = generate(model, tok, ids, mask, settings)
        for positions in ("prompt_end+generated", "all"):
            vector = _vector(2, 8.0)
            got = dac_generate(
                model, tok, ids, mask, LAYER, vector, settings, alpha_max=0.0, positions=positions
            )
            assert torch.equal(got.tokens, plain.tokens), (arch, positions)
            assert got.texts == plain.texts
            assert (got.alphas[~got.alphas.isnan()] == 0).all()
    # without padding (generate then drops the all-ones mask; so does DAC)
    model = tiny_random_model("llama")
    one = tok(PROMPTS[:1] * 2, return_tensors="pt")
    plain = generate(model, tok, one.input_ids, one.attention_mask, settings)
    got = dac_generate(
        model, tok, one.input_ids, one.attention_mask, LAYER, _vector(2, 8.0), settings, alpha_max=0
    )
    assert torch.equal(got.tokens, plain.tokens)


def test_alpha_max_zero_sampling_equals_generate(tiny_random_model, tiny_random_tokenizer, batch):
    ids, mask = batch
    model = tiny_random_model("llama")
    settings = GenerationSettings(
        max_new_tokens=10, do_sample=True, temperature=1.3, top_p=0.9, seed=5
    )
    plain = generate(model, tiny_random_tokenizer, ids, mask, settings)
    got = dac_generate(
        model, tiny_random_tokenizer, ids, mask, LAYER, _vector(2, 8.0), settings, alpha_max=0.0
    )
    assert torch.equal(got.tokens, plain.tokens)


def test_sampling_is_seeded_and_leaves_global_rng_alone(
    tiny_random_model, tiny_random_tokenizer, batch
):
    ids, mask = batch
    model = tiny_random_model("llama")

    def sample(seed: int) -> DACGeneration:
        settings = GenerationSettings(max_new_tokens=10, do_sample=True, seed=seed)
        return dac_generate(
            model, tiny_random_tokenizer, ids, mask, LAYER, _vector(3, 8.0), settings
        )

    torch.manual_seed(99)
    state = torch.get_rng_state()
    a, b, c = sample(7), sample(7), sample(8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.alphas, b.alphas, rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(a.tokens, c.tokens)


def _stop_string(text: str) -> str | None:
    """A 2-character printable piece of `text`, not at its start."""
    for i in range(1, len(text) - 1):
        piece = text[i : i + 2]
        if "\ufffd" not in text[: i + 2] and piece.strip():
            return piece
    return None


def test_stop_strings_and_eos_finish_rows(
    tiny_random_paths, tiny_random_model, tiny_random_tokenizer, batch
):
    ids, mask = batch
    tok = tiny_random_tokenizer
    settings = GenerationSettings(max_new_tokens=12)
    vector = _vector(4, 8.0)
    for arch in ("llama", "gpt2", "falcon", "qwen2", "opt", "bloom"):
        model = tiny_random_model(arch)
        full = dac_generate(model, tok, ids, mask, LAYER, vector, settings, alpha_max=0.3)
        row = next((i for i, t in enumerate(full.texts) if _stop_string(t)), None)
        if row is not None:
            break
    assert row is not None, "no random model produced printable text to cut"
    stop = _stop_string(full.texts[row])
    got = dac_generate(
        model, tok, ids, mask, LAYER, vector, settings, ["NEVER-SEEN", stop], alpha_max=0.3
    )
    assert got.texts == [cut_at_stop(t, [stop]) for t in full.texts]
    assert stop not in got.texts[row]
    seq = got.tokens[row]
    end = next(n for n in range(len(seq)) if stop in tok.decode(seq[: n + 1]))
    assert (seq[end + 1 :] == tok.pad_token_id).all() and end + 1 < settings.max_new_tokens
    assert got.alphas[row, end + 1 :].isnan().all() and not got.alphas[row, : end + 1].isnan().any()
    # the same stop with the unsteered model: identical to `generate`
    plain = generate(model, tok, ids, mask, settings, stop_strings=[stop])
    zero = dac_generate(model, tok, ids, mask, LAYER, vector, settings, [stop], alpha_max=0.0)
    assert zero.texts == plain.texts and torch.equal(zero.tokens, plain.tokens)

    # EOS: make row 0's fourth token an extra EOS id; the loop ends once every row is done
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["llama"])).eval()
    full = dac_generate(fresh, tok, ids, mask, LAYER, vector, settings, alpha_max=0.3)
    eos = int(full.tokens[0, 3])
    first = int((full.tokens[0] == eos).nonzero()[0])
    fresh.generation_config.eos_token_id = [tok.eos_token_id, eos]
    got = dac_generate(fresh, tok, ids, mask, LAYER, vector, settings, alpha_max=0.3)
    assert torch.equal(got.tokens[0, : first + 1], full.tokens[0, : first + 1])
    assert (got.tokens[0, first + 1 :] == tok.pad_token_id).all()
    assert got.alphas[0, first + 1 :].isnan().all()
    fresh.generation_config.eos_token_id = list(range(384))  # every token ends a row
    assert dac_generate(fresh, tok, ids, mask, LAYER, vector, settings).tokens.shape == (3, 1)


def test_hooks_removed_after_generation_and_on_error(
    tiny_random_model, tiny_random_tokenizer, batch
):
    ids, mask = batch
    model = tiny_random_model("llama")
    settings = GenerationSettings(max_new_tokens=3)
    before = _hooks(model)
    with steer(model, LAYER, _vector(5, 8.0), 1.0, prompt_len=ids.shape[1]):
        assert _hooks(model) > before  # the count sees steering hooks
    assert _hooks(model) == before
    dac_generate(model, tiny_random_tokenizer, ids, mask, LAYER, _vector(5, 8.0), settings)
    assert _hooks(model) == before
    with pytest.raises(ValueError, match="hidden size"):
        dac_generate(
            model, tiny_random_tokenizer, ids, mask, LAYER, torch.ones(HIDDEN + 1), settings
        )
    assert _hooks(model) == before
    with pytest.raises(ValueError, match="exactly one"):
        dac_generate(model, tiny_random_tokenizer, ids, mask, LAYER, None, settings)
    with pytest.raises(ValueError, match="left-padded"):
        dac_generate(
            model, tiny_random_tokenizer, ids.flip(1), mask.flip(1), LAYER, _vector(5, 1.0)
        )
    assert _hooks(model) == before


def test_single_step_vector_equals_plain_vector(tiny_random_model, tiny_random_tokenizer, batch):
    ids, mask = batch
    model = tiny_random_model("gpt2")
    settings = GenerationSettings(max_new_tokens=6)
    v = _vector(6, 8.0)
    a = dac_generate(model, tiny_random_tokenizer, ids, mask, LAYER, v, settings, alpha_max=0.3)
    b = dac_generate(
        model,
        tiny_random_tokenizer,
        ids,
        mask,
        LAYER,
        None,
        settings,
        alpha_max=0.3,
        step_vectors=v[None],
    )
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.alphas, b.alphas)


def test_step_stats():
    nan = float("nan")
    gen = DACGeneration(
        tokens=torch.zeros(3, 3, dtype=torch.long),
        texts=["", "", ""],
        alphas=torch.tensor([[0.5, 1.0, nan], [0.1, nan, nan], [0.3, 0.2, 0.4]]),
        kls=torch.zeros(3, 3),
    )
    stats = gen.step_stats()
    assert stats["mean"].tolist() == pytest.approx([0.3, 0.6, 0.4])
    assert stats["min"].tolist() == pytest.approx([0.1, 0.2, 0.4])
    assert stats["max"].tolist() == pytest.approx([0.5, 1.0, 0.4])


# ---- DAC's own vector source ----------------------------------------------------------------


def test_icl_step_vectors_shape_and_hand_check(tiny_random_model, tiny_random_tokenizer):
    tok = tiny_random_tokenizer
    model = tiny_random_model("llama")  # 2 layers: hidden_states[1] is layer 0's output
    icl = ["Q: 3 + 2 =\nA: 5\nQ: 4 + 4 =\nA:", "Q: 1 + 1 =\nA: 2\nQ: 7 + 2 =\nA:"]
    zero = ["Q: 4 + 4 =\nA:", "Q: 7 + 2 =\nA:"]
    conts = [" 8. The answer is 8.", " 9."]
    n_cont = [len(tok(c, add_special_tokens=False).input_ids) for c in conts]
    assert n_cont[0] > 3 and 1 < n_cont[1] < n_cont[0]
    T = 2

    got = icl_step_vectors(model, tok, icl, zero, conts, 0, T, batch_size=1)
    assert got.shape == (T + 1, 1, HIDDEN) and got.dtype == torch.float32
    every = icl_step_vectors(model, tok, icl, zero, conts, "all", T)  # batched, right-padded
    assert every.shape == (T + 1, 2, HIDDEN)
    torch.testing.assert_close(every[:, :1], got, atol=1e-5, rtol=1e-5)

    def reads(prompt: str, cont: str) -> Tensor:
        """Layer 0's output at the columns predicting each continuation token (one prompt)."""
        p = tok(prompt).input_ids
        c = tok(cont, add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model(input_ids=torch.tensor([p + c]), output_hidden_states=True)
        return out.hidden_states[1][0, len(p) - 1 : len(p) - 1 + len(c)]

    diffs = [reads(i, c) - reads(z, c) for i, z, c in zip(icl, zero, conts, strict=True)]
    want0 = (diffs[0][0] + diffs[1][0]) / 2
    want1 = (diffs[0][1] + diffs[1][1]) / 2
    rest = torch.cat([diffs[0][T:], diffs[1][T:]])  # every column from step T on, pooled
    torch.testing.assert_close(got[0, 0], want0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 0], want1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[T, 0], rest.mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])

    with pytest.raises(ValueError, match="long enough"):
        icl_step_vectors(model, tok, icl, zero, conts, 0, T=n_cont[0] + 1)
    with pytest.raises(ValueError, match="as many"):
        icl_step_vectors(model, tok, icl, zero[:1], conts, 0, T)


def test_dac_streams_write_their_caches_in_place(tiny_random_model, tiny_random_tokenizer, batch):
    """`cache_in_place` gives DAC's three streams `GrowingLayer`s and changes no token or
    strength (the naive reference above is met with it on, the default)."""
    from transformers.cache_utils import DynamicLayer

    from steerlight.model.generation import CACHE_NAMES
    from steerlight.model.growing import GrowingLayer

    model, (ids, mask) = tiny_random_model("llama"), batch
    kinds = set()
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: kinds.update(
            type(layer) for n in CACHE_NAMES if kw.get(n) is not None for layer in kw[n].layers
        ),
        with_kwargs=True,
    )
    runs = {}
    try:
        for in_place in (False, True):
            kinds.clear()
            settings = GenerationSettings(max_new_tokens=6, cache_in_place=in_place)
            got = dac_generate(model, tiny_random_tokenizer, ids, mask, LAYER, _vector(1, 8.0),
                               settings, alpha_max=2.0)  # fmt: skip
            runs[in_place] = got
            assert kinds == {GrowingLayer if in_place else DynamicLayer}
    finally:
        handle.remove()
    assert torch.equal(runs[True].tokens, runs[False].tokens)
    torch.testing.assert_close(runs[True].alphas, runs[False].alphas, equal_nan=True)

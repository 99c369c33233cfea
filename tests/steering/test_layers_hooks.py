"""Layer discovery and steering hooks on tiny random models of every supported architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from random_models import ARCHS, NUM_LAYERS
from torch import nn
from transformers import AutoModelForCausalLM

from steerlight.model.generation import GenerationSettings, generate
from steerlight.model.layers import decoder_layers, resolve_layer
from steerlight.steering.hooks import POSITIONS, Steering, steer

PROMPTS = [
    "Question: How many cows does the farmer have now?",
    "Q: 3 + 2 =",
    "Answer: Betty has 100 / 2 dollars",
]
SETTINGS = GenerationSettings(max_new_tokens=6)
ALPHA = 30.0

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def model_for(tiny_random_model):
    """The shared fp32 model of an architecture (loaded once per session); do not mutate it."""
    return tiny_random_model


def _vector(model: nn.Module, seed: int = 0) -> torch.Tensor:
    hidden = model.config.get_text_config().hidden_size
    return torch.randn(hidden, generator=torch.Generator().manual_seed(seed))


def _encode(tokenizer, prompts):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _all_hooks(model: nn.Module) -> list[tuple[str, str, int]]:
    found = []
    for name, module in model.named_modules():
        for kind in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_backward_hooks",
        ):
            found += [(name, kind, key) for key in getattr(module, kind)]
    return found


# ---- layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_decoder_layers_found_with_right_count(arch, model_for):
    model = model_for(arch)
    layers = decoder_layers(model)
    assert isinstance(layers, nn.ModuleList)
    assert len(layers) == NUM_LAYERS[arch]
    assert len({type(block) for block in layers}) == 1
    # the blocks belong to the model (not some other list of the same length)
    ids = {id(m) for m in model.modules()}
    assert all(id(block) in ids for block in layers)
    assert "Block" in type(layers[0]).__name__ or "Layer" in type(layers[0]).__name__


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom"])
def test_resolve_layer_range(arch, model_for):
    model = model_for(arch)
    n = NUM_LAYERS[arch]
    assert resolve_layer(model, 0) == 0
    assert resolve_layer(model, -1) == n - 1
    assert resolve_layer(model, -n) == 0
    assert resolve_layer(model, torch.tensor(1)) == 1
    message = f"for this model's {n} decoder layers: use 0..{n - 1} or -{n}..-1"
    with pytest.raises(ValueError, match="layer 12 is out of range " + message.replace(".", r"\.")):
        resolve_layer(model, 12)
    with pytest.raises(ValueError, match=f"layer {-n - 1} is out of range"):
        resolve_layer(model, -n - 1)
    with pytest.raises(ValueError, match="out of range"):
        with steer(model, n, _vector(model), 1.0, "all"):
            pass
    with pytest.raises(TypeError):
        resolve_layer(model, 1.5)


def test_decoder_of_an_encoder_decoder_config_counts_its_own_layers():
    """``BartForCausalLM`` is only the decoder: its count is `decoder_layers`, not the encoder's."""
    from transformers import BartConfig

    config = BartConfig(
        vocab_size=64, d_model=16, encoder_layers=4, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    assert config.num_hidden_layers == 4
    assert decoder_layers(model) is model.model.decoder.layers


def test_layer_hidden_states_names_the_model_and_the_reason():
    from steerlight.errors import SteerlightError
    from steerlight.model.layers import layer_hidden_states

    h = torch.zeros(2, 5, 8)
    assert layer_hidden_states(h, "llama", 0, 5) is h
    assert layer_hidden_states((h, None), "llama", 0, None) is h
    cases = [
        (torch.zeros(2, 5, 4, 8), 5, "cannot steer m: its decoder layers keep 4 parallel "),
        (
            torch.zeros(2, 9, 8),
            5,
            "cannot steer m: its decoder layers return more positions than input",
        ),
        (torch.zeros(2, 3, 8), 5, "cannot steer m: its decoder layers do not return one hidden"),
        ({"h": h}, 5, "cannot steer m: its decoder layer 1 returns dict, not hidden states"),
    ]
    for output, tokens, start in cases:
        with pytest.raises(SteerlightError) as err:
            layer_hidden_states(output, "m", 1, tokens)
        assert str(err.value).startswith(start) and "\n" not in str(err.value)


def test_decoder_layers_prefers_largest_and_errors_clearly():
    class Config:
        num_hidden_layers = 3

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.heads = nn.ModuleList(nn.Identity() for _ in range(3))
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
            self.other = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

    toy = Toy()
    assert decoder_layers(toy) is toy.blocks
    toy.config.num_hidden_layers = 5
    with pytest.raises(ValueError, match=r"no nn.ModuleList has 5 entries.*blocks \(3\)"):
        decoder_layers(toy)
    with pytest.raises(ValueError, match="declares no layer count"):
        decoder_layers(nn.Sequential(nn.ModuleList([nn.Linear(2, 2)])))


# ---- alpha = 0 is exact, alpha != 0 steers (every architecture) -----------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_alpha_zero_exact_and_nonzero_steers(arch, model_for, tiny_random_tokenizer):
    model = model_for(arch)
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    prompt_len = ids.shape[1]
    v = _vector(model)
    layer = NUM_LAYERS[arch] // 2
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    tokens = generate(model, tiny_random_tokenizer, ids, mask, SETTINGS).tokens

    for positions in POSITIONS:
        for alpha in (0.0, torch.zeros(len(PROMPTS))):
            with steer(model, layer, v, alpha, positions, prompt_len=prompt_len), torch.no_grad():
                steered_logits = model(input_ids=ids, attention_mask=mask).logits
                steered_tokens = generate(model, tiny_random_tokenizer, ids, mask, SETTINGS).tokens
            assert torch.equal(steered_logits, logits), (positions, alpha)
            assert torch.equal(steered_tokens, tokens), (positions, alpha)

    with steer(model, layer, v, ALPHA, "all"), torch.no_grad():
        steered_logits = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert not torch.allclose(steered_logits[real], logits[real], atol=1e-3)

    for positions in POSITIONS:  # every mode steers generation (incl. the KV-cache steps)
        with steer(model, layer, v, ALPHA, positions, prompt_len=prompt_len):
            steered_tokens = generate(model, tiny_random_tokenizer, ids, mask, SETTINGS).tokens
        assert not torch.equal(steered_tokens, tokens), positions


# ---- left padding + KV cache: a batch equals each prompt alone -------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_padded_batch_matches_each_prompt_alone(arch, model_for, tiny_random_tokenizer):
    model = model_for(arch)
    tok = tiny_random_tokenizer
    ids, mask = _encode(tok, PROMPTS)
    assert len({int(n) for n in mask.sum(1)}) == len(PROMPTS), "prompts must differ in length"
    v = _vector(model, seed=1)
    for positions in POSITIONS:
        with steer(model, 0, v, ALPHA, positions, prompt_len=ids.shape[1]):
            batch = generate(model, tok, ids, mask, SETTINGS).tokens
        for i, prompt in enumerate(PROMPTS):
            one_ids, one_mask = _encode(tok, [prompt])
            with steer(model, 0, v, ALPHA, positions, prompt_len=one_ids.shape[1]):
                alone = generate(model, tok, one_ids, one_mask, SETTINGS).tokens[0]
            assert torch.equal(batch[i, : len(alone)], alone), (positions, i)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon"])
def test_per_row_alpha(arch, model_for, tiny_random_tokenizer):
    model = model_for(arch)
    tok = tiny_random_tokenizer
    prompts = PROMPTS[:2]
    ids, mask = _encode(tok, prompts)
    v = _vector(model, seed=2)
    layer = -1
    with steer(model, layer, v, torch.tensor([0.0, ALPHA]), prompt_len=ids.shape[1]):
        batch = generate(model, tok, ids, mask, SETTINGS).tokens

    ids0, mask0 = _encode(tok, prompts[:1])
    unsteered0 = generate(model, tok, ids0, mask0, SETTINGS).tokens[0]
    ids1, mask1 = _encode(tok, prompts[1:])
    with steer(model, layer, v, ALPHA, prompt_len=ids1.shape[1]):
        steered1 = generate(model, tok, ids1, mask1, SETTINGS).tokens[0]
    unsteered1 = generate(model, tok, ids1, mask1, SETTINGS).tokens[0]

    assert torch.equal(batch[0, : len(unsteered0)], unsteered0)
    assert torch.equal(batch[1, : len(steered1)], steered1)
    assert not torch.equal(steered1, unsteered1)  # row 1 really was steered


# ---- position semantics ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon"])
def test_positions_semantics_on_prompt_pass(arch, model_for, tiny_random_tokenizer):
    model = model_for(arch)
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    prompt_len = ids.shape[1]
    layer = 0
    v = _vector(model, seed=3)
    alpha = torch.tensor([2.0, -3.0, 5.0])

    def run():
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.logits, out.hidden_states[layer + 1]

    base_logits, base_h = run()
    pads = ~mask.bool()
    assert pads.any()

    with steer(model, layer, v, alpha, "generated", prompt_len=prompt_len):
        logits, h = run()
    assert torch.equal(logits, base_logits)  # no prompt position is steered
    assert torch.equal(h, base_h)

    with steer(model, layer, v, alpha, "prompt_end+generated", prompt_len=prompt_len):
        logits, h = run()
    assert torch.equal(h[:, :-1], base_h[:, :-1])  # earlier positions untouched (causal)
    assert torch.equal(logits[:, :-1], base_logits[:, :-1])
    expected = base_h[:, -1] + alpha[:, None] * v
    torch.testing.assert_close(h[:, -1], expected)  # the recorded hidden state is the steered one
    assert not torch.allclose(logits[:, -1], base_logits[:, -1], atol=1e-4)

    with steer(model, layer, v, alpha, "all"):
        logits, h = run()
    assert torch.equal(h[pads], base_h[pads])  # pads never steered
    first_real = mask.argmax(1)  # first non-pad column of each row
    rows = torch.arange(len(PROMPTS))
    torch.testing.assert_close(
        h[rows, first_real], base_h[rows, first_real] + alpha[:, None] * v
    )  # the very first real token of each row is steered (nothing else could move it)
    assert not torch.allclose(
        logits[:, :-1][~pads[:, :-1]], base_logits[:, :-1][~pads[:, :-1]], atol=1e-4
    )


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("padded", [True, False])
def test_kv_cache_steps_use_absolute_columns(positions, padded, model_for, tiny_random_tokenizer):
    """A hand-written cached decode loop == recomputing the whole sequence without a cache."""
    model = model_for("llama")
    prompts = PROMPTS if padded else PROMPTS[:1]
    ids, mask = _encode(tiny_random_tokenizer, prompts)
    prompt_len = ids.shape[1]
    v = _vector(model, seed=4)
    alpha = torch.linspace(5.0, 9.0, len(prompts))
    with steer(model, 1, v, alpha, positions, prompt_len=prompt_len), torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask if padded else None, use_cache=True)
        cache_, seq, full_mask = out.cache, ids, mask
        for _ in range(3):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            full_mask = torch.cat([full_mask, torch.ones_like(nxt)], 1)
            out = model(input_ids=nxt, attention_mask=full_mask if padded else None, cache=cache_)
            cache_ = out.cache
        recomputed = model(
            input_ids=seq, attention_mask=full_mask if padded else None, use_cache=False
        )
    torch.testing.assert_close(out.logits[:, -1], recomputed.logits[:, -1], rtol=1e-4, atol=1e-4)
    # and it differs from what the unsteered model would predict there
    with torch.no_grad():
        plain = model(input_ids=seq, attention_mask=full_mask if padded else None).logits[:, -1]
    assert not torch.allclose(plain, recomputed.logits[:, -1], atol=1e-3)


@pytest.mark.parametrize("arch", ["mamba", "lfm2", "recurrent_gemma"])
def test_columns_are_counted_without_a_mask(arch, model_for, tiny_random_tokenizer):
    """No 2D mask on any forward: the columns are counted per cache object (a Mamba cache
    reports no length; recurrent_gemma returns no cache, so each step recomputes)."""
    model = model_for(arch)
    ids, _ = _encode(tiny_random_tokenizer, PROMPTS[:1])
    v = _vector(model, seed=4)
    with steer(model, 0, v, 8.0, "generated", prompt_len=ids.shape[1]), torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        seq, cache_ = ids, out.cache if hasattr(out, "cache") else None
        for _ in range(3):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            if cache_ is None:  # no cache: every step feeds the whole sequence
                out = model(input_ids=seq, use_cache=True)
            else:
                out = model(input_ids=nxt, cache=cache_, use_cache=True)
                cache_ = out.cache
        recomputed = model(input_ids=seq, use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], recomputed, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = model(input_ids=seq, use_cache=False).logits[:, -1]
    assert not torch.allclose(plain, recomputed, atol=1e-3)


def _without_length(cache_):
    """The cache as Transformers < 5.25 made it: linear-attention layers kept no column count, so
    `get_seq_length` raised (5.25 added `LinearAttentionLayer.cumulative_length_linear`)."""

    def no_count(layer_idx: int = 0) -> int:
        raise ValueError("`get_seq_length` can only be called on Attention layers")

    cache_.get_seq_length = no_count
    return cache_


def test_cache_filled_outside_the_block_counts_or_needs_a_length(model_for, tiny_random_tokenizer):
    """A state-space cache filled before `steer`: where it counts its columns (Transformers >=
    5.25) the hook reads that count and steers the right column; where it holds a state but no
    count, a forward without a mask stops, unless the caller says how many columns it holds."""
    model = model_for("mamba")
    ids, _ = _encode(tiny_random_tokenizer, PROMPTS[:1])
    v = _vector(model, seed=6)
    with torch.no_grad():
        cache_ = model(input_ids=ids[:, :-1], use_cache=True).cache
        with steer(model, 0, v, 8.0, "prompt_end+generated", prompt_len=ids.shape[1]) as s:
            full = model(input_ids=ids, use_cache=False).logits[:, -1]
            uncounted = _without_length(copy.deepcopy(cache_))
            with pytest.raises(RuntimeError, match="reports no length"):
                model(input_ids=ids[:, -1:], cache=copy.deepcopy(uncounted))
            s.columns.track(uncounted, ids.shape[1] - 1)
            tracked = model(input_ids=ids[:, -1:], cache=uncounted).logits[:, -1]
            if hasattr(cache_.layers[0], "cumulative_length_linear"):
                assert int(cache_.get_seq_length()) == ids.shape[1] - 1
                counted = model(input_ids=ids[:, -1:], cache=cache_).logits[:, -1]
                torch.testing.assert_close(counted, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tracked, full, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tracked, model(input_ids=ids).logits[:, -1], atol=1e-3)


def test_per_column_strengths_and_vectors(model_for, tiny_random_tokenizer):
    """alpha (B, T) and vector (T, H) give each column of the chunk its own steering."""
    model = model_for("llama")
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    b, t = ids.shape
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(7)
    alpha, vectors = torch.rand(b, t, generator=g), torch.randn(t, hidden, generator=g)

    def layer0() -> torch.Tensor:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[1]

    base = layer0()
    with steer(model, 0, vectors[0], 1.0, "all") as steering:
        steering.alpha, steering.vector = alpha, vectors
        got = layer0()
        steering.alpha = torch.ones(b, t + 1)
        with pytest.raises(ValueError, match="column strengths for a chunk of"):
            layer0()
    want = base + (alpha * mask)[..., None] * vectors  # pads never steered
    torch.testing.assert_close(got, want)


def test_column_counter_holds_caches_weakly():
    import gc

    from steerlight.model.columns import _ColumnCounter

    class Cache:  # any object a model passes around as its cache
        pass

    counter, kept, dropped = _ColumnCounter(), Cache(), Cache()
    counter.set(kept, 5)
    counter.set(dropped, 7)
    counter.set(kept, 6)
    assert counter.get(kept) == 6 and counter.get(dropped) == 7
    del dropped
    gc.collect()
    counter.set(Cache(), 1)  # dead entries are dropped on the next write
    assert len(counter._entries) <= 2 and counter.get(kept) == 6
    state = [torch.zeros(1)]  # lists cannot be weakly referenced: held until replaced
    counter.set(state, 3)
    assert counter.get(state) == 3 and counter.get(list(state)) is None


def test_alpha_is_mutable_between_forwards(model_for, tiny_random_tokenizer):
    model = model_for("llama")
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    v = _vector(model, seed=5)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    base = logits()
    with steer(model, 0, v, torch.full((3,), 4.0), "all") as steering:
        assert isinstance(steering, Steering)
        steered = logits()
        steering.alpha = 0.0
        assert torch.equal(logits(), base)
        steering.alpha = torch.zeros(3)
        assert torch.equal(logits(), base)
        steering.alpha[:] = 4.0  # in-place edits are seen
        assert torch.equal(logits(), steered)
        steering.alpha[1] = 0.0
        mixed = logits()
        assert torch.equal(mixed[1], base[1])  # adding 0 * v is exact
        assert torch.equal(mixed[0], steered[0])
        with pytest.raises(ValueError, match="3 rows"):
            steering.alpha = torch.ones(2)
            logits()


# ---- hook lifetime --------------------------------------------------------------------------


def test_hooks_removed_after_exit_and_exception(tiny_random_paths, tiny_random_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["gpt2"])).eval()
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    v = _vector(model)
    assert _all_hooks(model) == []
    with steer(model, 1, v, 1.0, prompt_len=ids.shape[1]):
        hooks = _all_hooks(model)
        assert len({key for _, _, key in hooks}) == 3  # model pre + post hook, layer hook
        assert ("transformer.h.1", "_forward_hooks") in {(name, kind) for name, kind, _ in hooks}
        model(input_ids=ids, attention_mask=mask)
    assert _all_hooks(model) == []

    with pytest.raises(KeyError, match="boom"):
        with steer(model, -1, v, 1.0, "all"):
            model(input_ids=ids, attention_mask=mask)
            raise KeyError("boom")
    assert _all_hooks(model) == []

    # an exception inside the hooked forward itself (alpha for the wrong batch size)
    with pytest.raises(ValueError, match="2 strengths for a batch of 3"):
        with steer(model, 0, v, torch.ones(2), "all"):
            model(input_ids=ids, attention_mask=mask)
    assert _all_hooks(model) == []


def test_hooks_coexist_with_transformers_capture_hooks(tiny_random_paths, tiny_random_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["llama"])).eval()
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    before = _all_hooks(model)
    assert before, "transformers 5 installs output-capturing hooks lazily"
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, 0, _vector(model), 1.0, "all"):
            raise RuntimeError("boom")
    assert _all_hooks(model) == before


def test_layer_called_outside_model_forward_is_an_error(model_for, tiny_random_tokenizer):
    model = model_for("llama")
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    with steer(model, 0, _vector(model), 1.0, "all"), torch.no_grad():
        with pytest.raises(RuntimeError, match="positions are unknown"):
            model.model(input_ids=ids, attention_mask=mask)  # the base model, not the hooked one
        model(input_ids=ids, attention_mask=mask)  # the state is not left stale


def test_bad_arguments(model_for):
    model = model_for("llama")
    v = _vector(model)
    with pytest.raises(ValueError, match="needs prompt_len"):
        with steer(model, 0, v, 1.0, "generated"):
            pass
    with pytest.raises(ValueError, match="positions must be one of"):
        with steer(model, 0, v, 1.0, "everything", prompt_len=3):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="1-D"):
        with steer(model, 0, v[None], 1.0, "all"):
            pass
    with pytest.raises(ValueError, match="hidden size"):
        with steer(model, 0, torch.ones(7), 1.0, "all"), torch.no_grad():
            model(input_ids=torch.tensor([[5, 6, 7]]))


# ---- dtype ----------------------------------------------------------------------------------


def test_float32_vector_on_bfloat16_model(tiny_random_paths, tiny_random_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_random_paths["llama"]), dtype=torch.bfloat16
    ).eval()
    ids, mask = _encode(tiny_random_tokenizer, PROMPTS)
    v = _vector(model)
    assert v.dtype == torch.float32
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
    with steer(model, 0, v, ALPHA, prompt_len=ids.shape[1]), torch.no_grad():
        steered = model(input_ids=ids, attention_mask=mask).logits
        tokens = generate(model, tiny_random_tokenizer, ids, mask, SETTINGS).tokens
    with steer(model, 0, v.to(torch.bfloat16), ALPHA, prompt_len=ids.shape[1]), torch.no_grad():
        same = model(input_ids=ids, attention_mask=mask).logits
    assert steered.dtype == torch.bfloat16
    assert torch.equal(steered, same)
    assert not torch.equal(steered[:, -1], base[:, -1])
    assert tokens.shape[0] == len(PROMPTS) and tokens.dtype == torch.long

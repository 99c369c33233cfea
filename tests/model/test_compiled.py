"""The compiled decode (`model.generation.compile`) gives the plain path's tokens, steered or
not, and compiles once per steered layer: not per alpha, per trial, per vector or per row
count within a bucket."""

from __future__ import annotations

import logging

import pytest
import torch
from random_models import early_stop_tokenizer
from torch._dynamo.testing import CompileCounter

from steerlight.model import compiled
from steerlight.model.generation import GenerationSettings
from steerlight.model.layer_hooks import LayerHooks
from steerlight.model.refill import refill_generate
from steerlight.steering.hooks import steer

PROMPTS = [
    "Question: How many cows does the farmer have now?",
    "Q: 3 + 2 =",
    "A farmer has 7 cows and buys",
    "Tom reads",
    "The answer is 12 because 3 times 4 is",
]

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PLAIN = GenerationSettings(max_new_tokens=10)
COMPILED = GenerationSettings(max_new_tokens=10, compile=True)


def _batch(tokenizer, prompts=PROMPTS):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _vector(model, seed=0):
    hidden = model.config.get_text_config().hidden_size
    v = torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _run(model, tok, ids, mask, settings, steering=None, slots=2, backend=None):
    """Tokens of `refill_generate` (the plain path) or the compiled one, steered by
    (layer, vector, alpha, positions) or not; no hook is left on the model."""
    if steering is None:
        gen = _generate(model, tok, ids, mask, settings, None, slots, backend)
    else:
        layer, v, alpha, positions = steering
        with steer(model, layer, v, alpha, positions, prompt_len=ids.shape[1]) as s:
            gen = _generate(model, tok, ids, mask, settings, s.columns, slots, backend)
    hooks = [
        h
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]
    assert not [
        h
        for h in hooks
        if isinstance(h, LayerHooks) or "steerlight" in getattr(h, "__module__", "")
    ]
    return gen


def _generate(model, tok, ids, mask, settings, columns, slots, backend):
    if settings.compile and backend is not None:
        return compiled.compiled_generate(
            model, tok, ids, mask, settings, (), slots, columns, backend=backend
        )
    return refill_generate(model, tok, ids, mask, settings, (), slots, columns)


def test_compiled_decode_gives_the_plain_paths_tokens(tiny_random_model, tiny_random_tokenizer):
    """Rows ending at different steps, a group smaller than its row bucket: the plain path's
    tokens for every steering setting (and no steering)."""
    model = tiny_random_model("llama")
    ids, mask = _batch(tiny_random_tokenizer)
    tok = early_stop_tokenizer(model, tiny_random_tokenizer, ids, mask)
    v = _vector(model)
    counter = CompileCounter()
    for steering in [None, (0, v, 0.0, "all"), (0, v, 4.0, "prompt_end+generated"),
                     (1, v, -3.0, "generated"), (0, v, 2.0, "all")]:  # fmt: skip
        want = _run(model, tok, ids, mask, PLAIN, steering, slots=3)
        got = _run(model, tok, ids, mask, COMPILED, steering, slots=3, backend=counter)
        assert torch.equal(got.tokens, want.tokens), steering
        assert got.texts == want.texts
        if steering is None:
            lengths = (want.tokens != tok.pad_token_id).sum(1)
            assert lengths.min() < lengths.max(), "rows must stop at different steps"
        elif steering[2]:  # the steered columns matter: a wrong column would show
            assert not torch.equal(want.tokens, _run(model, tok, ids, mask, PLAIN).tokens)
    assert counter.frame_count > 0


def test_new_alphas_vectors_trials_and_row_counts_do_not_recompile(
    tiny_random_model, tiny_random_tokenizer
):
    """A search's trials at one layer: each a new steering block with its own alpha and
    vector, and batches of 3 and 4 rows (one bucket of 4): compiled once. A new layer, or no
    steering at all, is one more graph, which later calls reuse."""
    model = tiny_random_model("llama")
    tok = tiny_random_tokenizer
    ids, mask = _batch(tok, PROMPTS[:4])
    counter = CompileCounter()

    def frames_after(steering, rows=4):
        _run(model, tok, ids[:rows], mask[:rows], COMPILED, steering, None, counter)
        return counter.frame_count

    first = frames_after((0, _vector(model, 0), 1.0, "prompt_end+generated"))
    for seed, alpha, rows in [(1, -2.5, 4), (2, 0.25, 3), (3, 7.0, 4), (4, 0.0, 3)]:
        steering = (0, _vector(model, seed), alpha, "prompt_end+generated")
        assert frames_after(steering, rows) == first, (seed, alpha, rows)
    other_layer = frames_after((1, _vector(model), 1.0, "prompt_end+generated"))
    assert other_layer > first
    unsteered = frames_after(None)
    assert unsteered > other_layer
    assert frames_after((1, _vector(model, 5), -1.0, "prompt_end+generated")) == unsteered
    assert frames_after((0, _vector(model, 6), 3.0, "prompt_end+generated")) == unsteered
    assert frames_after(None) == unsteered


def test_row_buckets():
    assert [compiled.row_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [
        1, 2, 4, 4, 8, 8, 16, 64,
    ]  # fmt: skip


@pytest.mark.parametrize("arch", ["gemma2", "mamba", "lfm2"])
def test_caches_it_cannot_compile_decode_the_plain_way_and_say_so(
    arch, tiny_random_model, tiny_random_tokenizer, caplog
):
    """Sliding-window, state-space and hybrid caches: the plain path's tokens, and a log line
    naming why."""
    model = tiny_random_model(arch)
    ids, mask = _batch(tiny_random_tokenizer)
    want = _run(model, tiny_random_tokenizer, ids, mask, PLAIN)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        got = _run(model, tiny_random_tokenizer, ids, mask, COMPILED)
    assert torch.equal(got.tokens, want.tokens)
    assert any("decodes the plain way" in r.message for r in caplog.records)
    assert (
        compiled.compiled_generate(
            model, tiny_random_tokenizer, ids, mask, COMPILED, backend=CompileCounter()
        )
        is None
    )


def test_a_foreign_hook_or_per_row_strengths_decode_the_plain_way(
    tiny_random_model, tiny_random_tokenizer
):
    """A hook steerlight did not add would stay in a compiled graph after its removal, and rows
    with their own strengths cannot share a bucket: both decode the plain way."""
    model = tiny_random_model("llama")
    ids, mask = _batch(tiny_random_tokenizer)
    calls = []
    handle = model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        why = compiled.unsupported(model, COMPILED, fixed_rows=False)
    finally:
        handle.remove()
    assert "forward hook" in why and "layers.0" in why
    assert "strengths" in compiled.unsupported(model, COMPILED, fixed_rows=True)
    assert compiled.unsupported(model, COMPILED, fixed_rows=False) is None
    sampling = GenerationSettings(do_sample=True, compile=True)
    assert "greedily" in compiled.unsupported(model, sampling, fixed_rows=False)

"""`GrowingLayer` holds a `DynamicLayer`'s keys and values, written in place, and the refill
loop decodes on it."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from steerlight.model import growing
from steerlight.model.generation import CACHE_NAMES, GenerationSettings
from steerlight.model.growing import GrowingLayer, grow_in_place
from steerlight.model.refill import refill_generate


def _columns(t: int, seed: int, rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, t, 4, generator=g), torch.randn(rows, 2, t, 4, generator=g)


def test_growing_layer_holds_a_dynamic_layers_tensors_through_every_edit(monkeypatch):
    monkeypatch.setattr(growing, "MIN_ROOM", 2)  # the room runs out several times
    plain, grown = DynamicLayer(), GrowingLayer()
    buffers = set()

    def both(edit):
        for layer in (plain, grown):
            edit(layer)
        assert torch.equal(plain.keys, grown.keys) and torch.equal(plain.values, grown.values)
        assert grown.get_seq_length() == plain.get_seq_length()

    both(lambda layer: layer.update(*_columns(5, 0)))  # a prefill
    for step in range(20):
        k, v = _columns(1, step + 1)
        got = grown.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, plain.update(k, v), strict=True))
        buffers.add(grown._room["keys"][0].data_ptr())
    assert len(buffers) < 10, "a buffer is copied only when its room runs out"
    both(lambda layer: layer.reorder_cache(torch.tensor([2, 0])))  # rows leave, in a new order
    both(lambda layer: layer.update(*_columns(1, 99, rows=2)))
    both(lambda layer: setattr(layer, "keys", layer.keys[..., 3:, :]))  # a pad trim
    both(lambda layer: setattr(layer, "values", layer.values[..., 3:, :]))
    both(lambda layer: layer.update(*_columns(2, 100, rows=2)))
    both(lambda layer: layer.crop(-4))
    both(lambda layer: layer.update(*_columns(1, 101, rows=2)))


def test_grow_in_place_keeps_the_cache_and_other_layer_kinds():
    cache = DynamicCache()
    cache.update(*_columns(4, 0), layer_idx=0)
    cache.update(*_columns(4, 1), layer_idx=1)
    keys = [layer.keys.clone() for layer in cache.layers]
    assert grow_in_place(cache) is cache
    assert all(type(layer) is GrowingLayer for layer in cache.layers)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys, cache.layers, strict=True))
    assert cache.get_seq_length() == 4


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("in_place", [True, False])
def test_refill_decodes_on_growing_layers(in_place, tiny_random_model, tiny_random_tokenizer):
    """The refill loop's decode steps run on `GrowingLayer`s where `cache_in_place` says so
    (its tokens are held to `generate`'s in test_refill, on every architecture there)."""
    model = tiny_random_model("llama")
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.extend(kwargs.get(name) for name in CACHE_NAMES),
        with_kwargs=True,
    )
    enc = tiny_random_tokenizer(
        ["Q: 3 + 2 =", "Tom reads a book"], return_tensors="pt", padding=True
    )
    try:
        refill_generate(model, tiny_random_tokenizer, enc.input_ids, enc.attention_mask,
                        GenerationSettings(max_new_tokens=4, cache_in_place=in_place))  # fmt: skip
    finally:
        handle.remove()
    steps = [c for c in seen if c is not None]
    kind = GrowingLayer if in_place else DynamicLayer
    assert steps and all(type(layer) is kind for c in steps for layer in c.layers)

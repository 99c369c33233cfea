"""CAA vectors, corrupted solutions, probes and the activation cache."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from steerlight.answers import gold_answer
from steerlight.steering.activations import ActivationCache, read_activations, read_mask_for
from steerlight.steering.caa import corrupt_solution, mean_difference, scale_vectors
from steerlight.steering.probes import auc, fit_probes


def test_corrupted_solutions_never_keep_the_gold_answer(gsm8k_dir):
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        bad = corrupt_solution(row["answer"], random.Random(i))
        assert bad != row["answer"]
        assert gold_answer(bad) != gold_answer(row["answer"]), row["answer"]
        assert bad.count("\n") == row["answer"].count("\n")
    again = corrupt_solution(rows[0]["answer"], random.Random(0))
    assert again == corrupt_solution(rows[0]["answer"], random.Random(0))


def test_corruption_is_consistent_within_a_solution():
    answer = "He has 3 + 4 = <<3+4=7>>7 pens.\nThen 7 x 2 = <<7*2=14>>14 pens.\n#### 14"
    bad = corrupt_solution(answer, random.Random(1))
    numbers = [int(n) for n in re.findall(r"\d+", bad)]
    original = [int(n) for n in re.findall(r"\d+", answer)]
    mapping = dict(zip(original, numbers, strict=True))
    # every occurrence of a number maps to the same replacement
    for o, n in zip(original, numbers, strict=True):
        assert mapping[o] == n
    assert mapping[14] != 14 and 14 not in numbers


def test_mean_difference_and_scaling():
    acts = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]], [[3.0, 4.0]], [[1.0, 1.0]]])  # (4, 1, 2)
    labels = torch.tensor([True, False, True, False])
    v = mean_difference(acts, labels)
    assert torch.allclose(v, torch.tensor([[1.5, 2.5]]))
    assert torch.allclose(scale_vectors(v, "unit").norm(dim=-1), torch.ones(1))
    norms = torch.tensor([10.0])
    assert torch.allclose(scale_vectors(v, "mean_norm", norms).norm(dim=-1), norms)
    with pytest.raises(ValueError, match="both positive and negative"):
        mean_difference(acts, torch.ones(4, dtype=torch.bool))


def test_auc_hand_computed():
    scores = torch.tensor([[0.9], [0.8], [0.4], [0.8], [0.1]])
    labels = torch.tensor([True, True, True, False, False])
    # pairs (pos, neg): 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1, 0.4<0.8, 0.4>0.1 -> 4.5 / 6
    assert auc(scores, labels).item() == pytest.approx(4.5 / 6)


def test_probes_separable_vs_shuffled():
    gen = torch.Generator().manual_seed(0)
    n, layers, hidden = 240, 3, 16
    labels = torch.arange(n) % 2 == 0
    acts = torch.randn(n, layers, hidden, generator=gen)
    acts[labels, 1, :4] += 2.0  # only layer 1 carries the label
    probes = fit_probes(acts, labels, groups=torch.arange(n) // 2, seed=0)
    assert probes.auc[1] > 0.97
    assert probes.best_layer() == 1
    shuffled = labels[torch.randperm(n, generator=gen)]
    null = fit_probes(acts, shuffled, seed=0)
    assert (null.auc - 0.5).abs().max() < 0.15


def test_read_activations_match_hidden_states(tiny_random_paths, tiny_random_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_random_paths["llama"]).eval()
    tok = tiny_random_tokenizer
    texts = ["Tom has 3 apples.", "She buys 4 more pens today and 2 more."]
    enc = tok(texts, padding=True, return_tensors="pt")
    start = torch.tensor([enc["input_ids"].shape[1] - 3] * 2)
    read = read_mask_for(enc["attention_mask"], start, "mean")
    acts = read_activations(model, enc["input_ids"], enc["attention_mask"], read)
    n_layers = model.config.num_hidden_layers
    assert acts.shape == (2, n_layers, model.config.hidden_size)
    for row, text in enumerate(texts):
        alone = tok(text, return_tensors="pt")
        with torch.no_grad():
            hs = model(**alone, output_hidden_states=True).hidden_states
        for layer in range(n_layers - 1):  # the last entry is after the final norm
            expected = hs[layer + 1][0, -3:].mean(0)
            torch.testing.assert_close(acts[row, layer], expected, atol=1e-5, rtol=1e-4)
    last = read_mask_for(enc["attention_mask"], start, "last")
    assert last.sum(1).tolist() == [1, 1] and last[:, -1].all()


def test_activation_cache_hit_miss_and_corruption(tmp_path):
    cache = ActivationCache(tmp_path)
    key = {"model": "m", "preset": "gsm8k", "weights": "abc"}
    tensors = {
        "acts": torch.randn(4, 2, 3),
        "labels": torch.tensor([1, 0, 1, 0], dtype=torch.uint8),
    }
    assert cache.load(key) is None
    path = cache.save(key, tensors)
    hit = cache.load(key)
    assert hit is not None and all(torch.equal(hit[k], tensors[k]) for k in tensors)
    assert cache.load({**key, "preset": "gsm8k_cot"}) is None
    assert cache.load({**key, "model": "other"}) is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temp files left behind"
    path.write_bytes(path.read_bytes()[:20])  # truncated, as after a crash
    with pytest.warns(UserWarning, match="unusable"):
        assert cache.load(key) is None
    cache.save(key, tensors)
    assert torch.equal(cache.load(key)["acts"], tensors["acts"])

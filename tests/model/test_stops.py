"""Stop patterns (the chat preset's complete answer line) and the chat template's end-of-turn
token; stop strings themselves are tested in test_generation.py."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from steerlight.answers import ANSWER_LINE
from steerlight.data.prompts import get_preset
from steerlight.model.generation import (
    GenerationSettings,
    StopMatcher,
    cut_at_stop,
    end_of_turn_id,
    generate,
    stop_token_ids,
)
from steerlight.model.refill import refill_generate

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LINES = {  # text -> where the answer-line rule cuts it (None: no complete answer line)
    "She has 7.\n#### 7\n#### 7\n#### 7": "She has 7.\n#### 7",
    "#### 18\nmore": "#### 18",
    "x\n#### 1,000.50 \n": "x\n#### 1,000.50 ",
    "x\n#### -3\n": "x\n#### -3",
    "x\n####  $5\n\n": "x\n####  $5",
    "x\n#### 18": None,  # the line is not complete yet: the model may write more digits
    "so the answer is #### 18\n": None,  # not a line of its own
    "x\n#### 18 apples\n": None,
    "x\n####\n": None,
    "x\n#### .5\n": None,
    "x\n#### " + "1" * 21 + "\n": None,  # a match never spans more than StopMatcher sees
}


@pytest.mark.parametrize("text", LINES)
def test_the_answer_line_rule(text):
    want = LINES[text]
    assert bool(ANSWER_LINE.search(text)) == (want is not None)
    assert cut_at_stop(text, [ANSWER_LINE]) == (text if want is None else want)


def test_presets_stops():
    """lm-eval's presets keep lm-eval's `until` strings; the chat preset ends at an answer
    line (and at the model's end-of-turn token)."""
    assert get_preset("gsm8k").stop == ("Question:",)
    assert get_preset("chat").stop == (ANSWER_LINE,)
    both = ["Question:", ANSWER_LINE]
    assert cut_at_stop("a\n#### 3\nQuestion: b", both) == "a\n#### 3"
    assert cut_at_stop("a Question: b\n#### 3\n", both) == "a "


def _first_stop(row: list[int], stopped) -> int | None:
    return next((k for k in range(1, len(row) + 1) if stopped(row[:k])), None)


def test_stop_matcher_finds_answer_lines_where_a_full_decode_does(tiny_random_tokenizer):
    """Decoding only a row's last tokens ends it at the same token as decoding it all, also
    when the decoded tail starts right at a `####` that is not at a line's start."""
    tok = tiny_random_tokenizer
    texts = [
        "Natalia sold 48 clips in April and half as many in May. " * 4 + "\n#### 72\n#### 72",
        "She pays 5 + 7 = 12 dollars so the total is #### 12\nthen\n#### 12\nend",
        "#### 3\n" + "and more words after the first line " * 3,
        "words " * 30 + "so the answer is #### 45\n" + "x" * 20,
        "Total: 2,500 dollars.\n#### 2,500.\n",
    ]
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    matcher = StopMatcher(tok, [ANSWER_LINE])
    wants = []
    for row in rows:
        want = _first_stop(
            row, lambda p: bool(ANSWER_LINE.search(tok.decode(p, skip_special_tokens=True)))
        )
        assert _first_stop(row, matcher) == want, tok.decode(row)
        wants.append(want)
    assert wants[3] is None and wants[0] > matcher.tail  # a stop beyond the decoded tail
    longest = "\n####   $-" + "1" * 20 + "   \n"  # the longest text the rule matches
    assert ANSWER_LINE.fullmatch(longest) and len(longest) <= StopMatcher.PATTERN_SPAN


@pytest.fixture
def llama(tiny_random_paths):
    return AutoModelForCausalLM.from_pretrained(str(tiny_random_paths["llama"])).eval()


def test_generate_and_refill_stop_at_a_pattern(llama, tiny_random_tokenizer):
    """A pattern ends a row in `generate` (a stopping criterion) and in refill (the matcher),
    and both cut the text after the match."""
    tok = tiny_random_tokenizer
    enc = tok(
        ["Question: How many cows?", "Q: 3 + 2 =", "Betty has"], return_tensors="pt", padding=True
    )
    ids, mask = enc.input_ids, enc.attention_mask
    settings = GenerationSettings(max_new_tokens=12)
    full = generate(llama, tok, ids, mask, settings)
    row = max(range(len(ids)), key=lambda i: len(full.texts[i].strip()))
    text = full.texts[row]
    piece = next(text[i : i + 2] for i in range(2, len(text) - 1) if text[i : i + 2].strip())
    pattern = re.compile(re.escape(piece))
    got = generate(llama, tok, ids, mask, settings, [pattern])
    end = text.find(piece) + len(piece)
    assert got.texts[row] == text[:end]
    assert (got.tokens[row] != tok.pad_token_id).sum() < settings.max_new_tokens
    for i, t in enumerate(full.texts):
        assert got.texts[i] == cut_at_stop(t, [pattern])
    refilled = refill_generate(llama, tok, ids, mask, settings, [pattern], slots=2)
    assert refilled.texts == got.texts
    assert torch.equal(refilled.tokens, got.tokens)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_chat_templates_end_of_turn_token_ends_a_row(tiny_random_tokenizer, llama):
    tok = copy.deepcopy(tiny_random_tokenizer)
    assert end_of_turn_id(tok) is None  # no template
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    assert end_of_turn_id(tok) == im_end
    assert im_end in stop_token_ids(llama, tok)
    plain = copy.deepcopy(tiny_random_tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_id(plain) is None  # text after a turn is no token of its own

"""Where a row's text ends: stop strings (lm-eval's ``until``) and stop patterns.

A stop string ends a row once its text contains it, and the text is cut before it, as
lm-eval cuts at its ``until`` strings. A stop pattern (a compiled regex such as
`steerlight.answers.ANSWER_LINE`) ends a row once its text matches, and the text is cut after
the match without its last newline: the matched line is part of the answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria

Stop = str | re.Pattern[str]
"""A stop string, or a pattern whose match ends a row."""

log = logging.getLogger(__name__)


def cut_at_stop(text: str, stop_strings: Sequence[Stop]) -> str:
    """`text` up to the earliest stop: before a stop string, after a pattern's match (its last
    newline excluded)."""
    cut = len(text)
    for s in stop_strings:
        if isinstance(s, re.Pattern):
            m = s.search(text)
            if m:
                cut = min(cut, m.end() - m.group().endswith("\n"))
        elif s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class StopMatcher:
    """Whether a row's text contains one of `stop_strings`, decoding only its last tokens.

    A stop string that newly appears ends in the newest token's text, so the last
    ``longest + 8`` tokens hold it; the whole row is decoded only when their text is too short
    for that (special tokens decode to nothing, and a partial decode may differ in its first
    characters). This keeps a step's check O(1) in the row's length instead of O(length).
    """

    PATTERN_SPAN = 40
    """Characters a pattern's match may span (an answer line is short)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[Stop]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stop_strings if isinstance(s, re.Pattern) or s]
        spans = [self.PATTERN_SPAN if isinstance(s, re.Pattern) else len(s) for s in self.stops]
        self.longest = max(spans, default=0)
        self.tail = self.longest + 8

    def __call__(self, row: list[int]) -> bool:
        """Whether the text of `row` (token ids, newest last) contains a stop."""
        if not self.stops:
            return False
        decode = self.tokenizer.decode
        text = decode(row[-self.tail :], skip_special_tokens=True)
        whole = len(row) <= self.tail
        if not whole:
            newest = decode(row[-1:], skip_special_tokens=True)
            if len(text) < self.longest + len(newest) + 2:
                text, whole = decode(row, skip_special_tokens=True), True
        for stop in self.stops:
            if isinstance(stop, str):
                if stop in text:
                    return True
                continue
            m = stop.search(text)
            if m and m.start() == 0 and not whole:  # `^` at the tail's start: is it a line's?
                m = stop.search(decode(row, skip_special_tokens=True))
            if m:
                return True
        return False


class PatternStop(StoppingCriteria):
    """``generate``'s stopping criterion for the pattern stops: rows whose new text (after
    `width` prompt columns) matches one, checked by a `StopMatcher`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, patterns: Sequence[Stop], width: int):
        self.matcher, self.width = StopMatcher(tokenizer, patterns), width

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        rows = input_ids[:, self.width :].tolist()
        return torch.tensor([self.matcher(r) for r in rows], device=input_ids.device)


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS, the EOS ids the model's generation config lists (<|eot_id|>...) and
    the chat template's end-of-turn token (`end_of_turn_id`)."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    candidates.append(end_of_turn_id(tokenizer))
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the tokenizer's chat template closes an assistant turn with
    (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``), or None (no template, or plain text
    after the turn). Read once per tokenizer from a rendered two-turn conversation."""
    template = getattr(tokenizer, "chat_template", None)
    known = getattr(tokenizer, "_steerlight_end_of_turn", None)
    if known is not None and known[0] == template:
        return known[1]
    found = None
    if template:
        mark = "Steerlight end-of-turn probe."
        chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": mark}]
        try:
            text = tokenizer.apply_chat_template(chat, tokenize=False)
        except Exception as err:  # a template's own refusal (jinja raise_exception, roles)
            log.debug("chat template gives no end-of-turn token: %s", err)
            text = ""
        after = text.rpartition(mark)[2] if mark in text else ""
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and ids[0] in set(tokenizer.all_special_ids):
            found = int(ids[0])
    tokenizer._steerlight_end_of_turn = (template, found)
    return found


def pad_token_id(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The id finished rows are filled with: the tokenizer's pad, else the first EOS id (as
    ``generate`` does)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else stop_token_ids(model, tokenizer)[0]

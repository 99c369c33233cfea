"""Prompt presets named after the lm-evaluation-harness GSM8K tasks, so numbers are comparable."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from steerlight.answers import ANSWER_LINE, AnswerForm
from steerlight.errors import SteerlightError

PresetName = Literal["gsm8k", "gsm8k_cot", "gsm8k_cot_zeroshot", "chat"]

Row = dict[str, str]

_NOTE = re.compile(r"<<[^>]*>>")
# Our own wording (no third-party prompt text): asks for the `#### N` form the strict scorer reads.
CHAT_INSTRUCTION = (
    "Solve the problem step by step. End with a last line of the form '#### <number>'."
)


@dataclass(frozen=True)
class Preset:
    """How a question (and optional worked exemplars) becomes a prompt, and where decoding stops."""

    name: str
    question_prefix: str
    answer_prefix: str
    stop: tuple[str | re.Pattern[str], ...]
    """Stop strings (lm-eval's ``until``: cut before) and patterns (cut after the match)."""
    answer_form: AnswerForm
    default_shots: int
    chain_of_thought: bool = False

    def solution(self, answer: str) -> str:
        """A gold GSM8K solution rewritten in this preset's answer form."""
        if not self.chain_of_thought:
            return answer.strip()
        body, _, final = answer.rpartition("####")
        lines = [_NOTE.sub("", line).strip() for line in body.strip().splitlines()]
        return " ".join(line for line in lines if line) + f" The answer is {final.strip()}."

    def continuation(self, answer: str) -> str:
        """The text a model should produce after the prompt (prompt + continuation = full text)."""
        return (" " if self.name != "chat" else "") + self.solution(answer)

    def render(self, question: str, exemplars: Sequence[Row] = (), tokenizer=None) -> str:
        """The full prompt text for `question` after `exemplars` (chat presets need `tokenizer`)."""
        if self.name == "chat":
            return _render_chat(question, exemplars, tokenizer)
        shots = [self._turn(ex["question"]) + self.continuation(ex["answer"]) for ex in exemplars]
        return "\n\n".join([*shots, self._turn(question)])

    def _turn(self, question: str) -> str:
        return f"{self.question_prefix}{question.strip()}\n{self.answer_prefix}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("gsm8k", "Question: ", "Answer:", ("Question:",), "hash", default_shots=5),
        Preset("gsm8k_cot", "Q: ", "A:", ("Q:",), "sentence", 8, chain_of_thought=True),
        Preset("gsm8k_cot_zeroshot", "Q: ", "A:", ("Q:",), "sentence", 0, chain_of_thought=True),
        # steerlight's own: a chat model ends its turn with its end-of-turn token, or here
        Preset("chat", "", "", (ANSWER_LINE,), "hash", default_shots=0),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a SteerlightError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SteerlightError(
            f"unknown prompt preset {name!r}: choose one of {', '.join(PRESETS)}"
        ) from None


def _render_chat(question: str, exemplars: Sequence[Row], tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "the tokenizer"
        raise SteerlightError(
            f"preset 'chat' needs a tokenizer with a chat template, and {name} has none: "
            "use preset gsm8k, gsm8k_cot or gsm8k_cot_zeroshot"
        )
    messages = []
    for ex in exemplars:
        messages.append(
            {"role": "user", "content": f"{ex['question'].strip()}\n{CHAT_INSTRUCTION}"}
        )
        messages.append({"role": "assistant", "content": ex["answer"].strip()})
    messages.append({"role": "user", "content": f"{question.strip()}\n{CHAT_INSTRUCTION}"})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

"""GSM8KDataModule: splits, leakage guard, prompt presets, batches and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerlight.data.datamodule import STEP_BATCHES, GSM8KDataModule
from steerlight.data.prompts import CHAT_INSTRUCTION, get_preset
from steerlight.errors import SteerlightError
from steerlight.tiny.tokenizer import build_tokenizer

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
EXEMPLAR = {
    "question": "Ann has 2 pens. She buys 5 more. How many pens?",
    "answer": "Ann has 2 + 5 = <<2+5=7>>7 pens.\nShe has 7 pens now.\n#### 7",
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([QUESTION, EXEMPLAR["answer"]] * 20, vocab_size=300)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_folder(tmp_path: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """A small GSM8K-format folder with distinct questions."""
    rows = [
        {
            "question": f"Question number {i}: what is {i} plus 1?",
            "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
        }
        for i in range(n_train + n_test)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows[:n_train])
    write_jsonl(tmp_path / "test.jsonl", rows[n_train:])
    return tmp_path


def make_dm(source, tokenizer, **kw) -> GSM8KDataModule:
    kw = {"val_size": 5, "n_shots": 2, **kw}
    dm = GSM8KDataModule(source=str(source), tokenizer=tokenizer, **kw)
    dm.setup()
    return dm


# -- real data -------------------------------------------------------------------------------


def test_real_split_sizes_and_determinism(gsm8k_dir, tokenizer):
    dm = GSM8KDataModule(source=str(gsm8k_dir), tokenizer=tokenizer, n_shots=0)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6973, "val": 500, "test": 1319}
    same = GSM8KDataModule(source=str(gsm8k_dir), tokenizer=tokenizer, n_shots=0, limit_train=5)
    same.setup()
    assert sorted(ex["id"] for ex in same.splits["val"]) == sorted(
        ex["id"] for ex in dm.splits["val"]
    )
    other = GSM8KDataModule(
        source=str(gsm8k_dir), tokenizer=tokenizer, n_shots=0, split_seed=7, limit_train=5
    )
    other.setup()
    assert {ex["id"] for ex in other.splits["val"]} != {ex["id"] for ex in dm.splits["val"]}
    # val is taken from train, never from test, and disjoint from the train side
    assert all(ex["id"].startswith("train-") for ex in dm.splits["val"])
    assert not {ex["id"] for ex in dm.splits["val"]} & {ex["id"] for ex in dm.splits["train"]}
    assert dm.fingerprint != other.fingerprint


def test_exemplars_come_from_train_minus_val(gsm8k_dir, tokenizer):
    dm = make_dm(
        gsm8k_dir, tokenizer, val_size=500, n_shots=5, limit_val=3, limit_test=3, limit_train=3
    )
    val_questions = {ex["question"] for ex in dm.splits["val"]}
    assert len(dm.exemplars) == 5
    assert all(ex["id"].startswith("train-") for ex in dm.exemplars)
    assert not val_questions & {ex["question"] for ex in dm.exemplars}
    for ex in dm.splits["val"]:
        assert dm.exemplars[0]["question"].strip() in ex["prompt"]


# -- leakage guard ---------------------------------------------------------------------------


def test_planted_test_duplicate_in_train_raises(tmp_path, tokenizer):
    folder = make_folder(tmp_path)
    test_rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    train_rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    # Same question, different case and spacing: still a leak.
    planted = {**test_rows[3], "question": "  " + test_rows[3]["question"].upper() + " "}
    write_jsonl(folder / "train.jsonl", train_rows + [planted])
    leak = "leakage: a test question also appears in the (train|val) data"
    with pytest.raises(SteerlightError, match=leak):
        make_dm(folder, tokenizer)


def test_planted_duplicate_inside_train_leaks_into_val(tmp_path, tokenizer):
    rows = [{"question": f"Q {i}?", "answer": f"#### {i}"} for i in range(20)]
    rows = rows + [dict(r) for r in rows]  # every question twice: val always meets its twin
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [{"question": "other?", "answer": "#### 1"}])
    with pytest.raises(SteerlightError, match="leakage: a val question"):
        make_dm(tmp_path, tokenizer, n_shots=0)


def test_exemplars_file_with_a_test_question_raises(tmp_path, tokenizer):
    folder = tmp_path / "data"
    folder.mkdir()
    make_folder(folder)
    test_row = json.loads((folder / "test.jsonl").read_text().splitlines()[0])
    write_jsonl(tmp_path / "shots.jsonl", [EXEMPLAR, test_row])
    with pytest.raises(SteerlightError, match="also appears in the exemplars"):
        make_dm(folder, tokenizer, exemplars_file=str(tmp_path / "shots.jsonl"))


# -- presets ---------------------------------------------------------------------------------


def test_gsm8k_preset_text():
    prompt = get_preset("gsm8k").render(QUESTION, [EXEMPLAR])
    assert prompt == (
        "Question: Ann has 2 pens. She buys 5 more. How many pens?\n"
        "Answer: Ann has 2 + 5 = <<2+5=7>>7 pens.\nShe has 7 pens now.\n#### 7\n\n"
        f"Question: {QUESTION}\nAnswer:"
    )
    assert get_preset("gsm8k").stop == ("Question:",)


def test_gsm8k_cot_preset_text():
    prompt = get_preset("gsm8k_cot").render(QUESTION, [EXEMPLAR])
    assert prompt == (
        "Q: Ann has 2 pens. She buys 5 more. How many pens?\n"
        "A: Ann has 2 + 5 = 7 pens. She has 7 pens now. The answer is 7.\n\n"
        f"Q: {QUESTION}\nA:"
    )
    assert get_preset("gsm8k_cot").stop == ("Q:",)


def test_gsm8k_cot_zeroshot_preset_text():
    preset = get_preset("gsm8k_cot_zeroshot")
    assert preset.render(QUESTION) == f"Q: {QUESTION}\nA:"
    assert preset.default_shots == 0 and preset.answer_form == "sentence"


def test_chat_preset_uses_the_template(tokenizer):
    tok = build_tokenizer([QUESTION], vocab_size=280)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    prompt = get_preset("chat").render(QUESTION, [EXEMPLAR], tok)
    assert prompt == (
        f"<user>{EXEMPLAR['question']}\n{CHAT_INSTRUCTION}</user>"
        f"<assistant>{EXEMPLAR['answer']}</assistant>"
        f"<user>{QUESTION}\n{CHAT_INSTRUCTION}</user><assistant>"
    )


# -- batches ---------------------------------------------------------------------------------


def test_batches_are_left_padded_and_length_sorted(tmp_path, tokenizer):
    dm = make_dm(make_folder(tmp_path), tokenizer, batch_size=4, n_shots=1)
    lengths = [len(ex["input_ids"]) for ex in dm.splits["test"]]
    assert lengths == sorted(lengths, reverse=True)
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) >= {"ids", "questions", "golds", "answers", "input_ids", "attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    # a test step holds STEP_BATCHES generation batches, decoded `slots` rows at a time
    assert batch["input_ids"].shape[0] == min(4 * STEP_BATCHES, len(dm.splits["test"]))
    assert batch["slots"] == 4 and len(next(iter(dm.train_dataloader()))["ids"]) == 4
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all(), "left padding: every row ends with a real token"
    shortest = mask.sum(1).argmin()
    assert mask[shortest, 0] == 0 or mask.sum(1).min() == mask.shape[1]
    first = dm.splits["test"][0]
    assert batch["ids"][0] == first["id"] and batch["golds"][0] == first["gold"]


def test_long_prompts_lose_exemplars_until_they_fit(tmp_path, tokenizer):
    dm = make_dm(make_folder(tmp_path), tokenizer, n_shots=3)
    full = max(len(ex["input_ids"]) for ex in dm.splits["val"])
    short = make_dm(make_folder(tmp_path), tokenizer, n_shots=3, max_prompt_tokens=full - 1)
    assert max(len(ex["input_ids"]) for ex in short.splits["val"]) <= full - 1
    with pytest.raises(
        SteerlightError, match="zero-shot prompt has .* tokens, over max_prompt_tokens=3"
    ):
        make_dm(make_folder(tmp_path), tokenizer, n_shots=3, max_prompt_tokens=3)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"answer": "#### 1"}], r"train.jsonl line 2: missing or empty field 'question'"),
        ([{"question": "Q?"}], r"train.jsonl line 2: missing or empty field 'answer'"),
        ([{"question": "Q?", "answer": "just 3"}], r"train.jsonl line 2: field 'answer':.*####"),
    ],
)
def test_malformed_rows_are_named(tmp_path, tokenizer, rows, message):
    folder = make_folder(tmp_path)
    good = {"question": "Fine?", "answer": "#### 2"}
    write_jsonl(
        folder / "train.jsonl",
        [good, *rows] + [{"question": f"q{i}", "answer": "#### 1"} for i in range(10)],
    )
    with pytest.raises(SteerlightError, match=message):
        make_dm(folder, tokenizer)


def test_missing_split_file(tmp_path, tokenizer):
    folder = make_folder(tmp_path)
    (folder / "test.jsonl").unlink()
    with pytest.raises(SteerlightError, match=r"has no test.jsonl or test.parquet"):
        make_dm(folder, tokenizer)


@pytest.mark.parametrize("val_size", [30, 31, 0, -1])
def test_bad_val_size(tmp_path, tokenizer, val_size):
    with pytest.raises(
        SteerlightError,
        match=rf"val_size={val_size} (is invalid .* use 1..29|must be at least 1)",
    ):
        make_dm(make_folder(tmp_path), tokenizer, val_size=val_size)


def test_parquet_folder(tmp_path, tokenizer):
    from datasets import Dataset

    rows = [{"question": f"Q{i}: {i} + 1?", "answer": f"#### {i + 1}"} for i in range(20)]
    Dataset.from_list(rows[:15]).to_parquet(str(tmp_path / "train.parquet"))
    Dataset.from_list(rows[15:]).to_parquet(str(tmp_path / "test.parquet"))
    dm = make_dm(tmp_path, tokenizer, n_shots=1)
    assert len(dm.splits["test"]) == 5 and len(dm.splits["train"]) == 10
    assert {ex["gold"] for ex in dm.splits["test"]} == {"16", "17", "18", "19", "20"}

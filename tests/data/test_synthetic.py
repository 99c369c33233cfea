"""The synthetic GSM8K stand-in: determinism, correct calculator notes, variety, clean splits."""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction

import pytest

from steerlight.data import synthetic
from steerlight.data.splits import normalize_question
from steerlight.data.synthetic import (
    TEMPLATES,
    build_problem,
    generate,
    generate_problems,
    make_problem,
    synthetic_splits,
)

NOTE = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
FINAL = re.compile(r"#### (\d+)")
_OPS = {
    ast.Add: lambda x, y: x + y,
    ast.Sub: lambda x, y: x - y,
    ast.Mult: lambda x, y: x * y,
    ast.Div: lambda x, y: x / y,
}


def safe_eval(expr: str) -> Fraction:
    """Evaluate an integer + - * / expression exactly; anything else raises ValueError."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


def test_safe_eval_rejects_other_code() -> None:
    assert safe_eval("3*4") == 12 and safe_eval("35/7") == 5 and safe_eval("7/2") == Fraction(7, 2)
    for bad in ("__import__('os')", "2**8", "x+1", "1.5*2"):
        with pytest.raises(ValueError):
            safe_eval(bad)


@pytest.fixture(scope="module")
def problems() -> list[synthetic.Problem]:
    return generate_problems(2000, seed=123)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    assert generate(300, seed=7) == generate(300, seed=7)
    assert generate(300, seed=7) != generate(300, seed=8)
    assert make_problem(random.Random(5), 2) == make_problem(random.Random(5), 2)


def test_does_not_touch_global_random_state() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    generate(50, seed=1)
    assert random.random() == expected


def test_rows_have_only_question_and_answer(problems) -> None:
    rows = generate(50, seed=3)
    assert len(rows) == 50
    assert all(set(r) == {"question", "answer"} for r in rows)
    assert all(r["question"].strip().endswith("?") for r in rows)
    assert set(make_problem(random.Random(0), 3)) == {"question", "answer"}


def test_every_note_is_correct_and_final_matches_last_step(problems) -> None:
    for p in problems:
        lines = p.answer.split("\n")
        assert re.fullmatch(r"#### \d+", lines[-1]), p.answer
        assert len(lines) == p.n_steps + 1, p.answer
        results = []
        for line in lines[:-1]:
            notes = NOTE.findall(line)
            assert len(notes) == 1, f"one calculator note per step line: {line!r}"
            expr, result = notes[0]
            assert re.fullmatch(r"\d+", result), line
            assert safe_eval(expr) == int(result), line
            assert int(result) >= 0, line
            assert int(result) <= 500, line
            # The visible working just before the note says the same thing as the note.
            shown = expr.replace("*", " x ").replace("/", " / ").replace("+", " + ")
            shown = shown.replace("-", " - ")
            assert f"{shown} = <<{expr}={result}>>{result}" in line, line
            results.append(int(result))
        final = FINAL.fullmatch(lines[-1])
        assert final is not None and int(final.group(1)) == results[-1], p.answer
        # Each step after the first builds on the previous step's result.
        for prev, line in zip(results[:-1], lines[1:-1], strict=True):
            operands = [int(x) for x in re.findall(r"\d+", NOTE.findall(line)[0][0])]
            assert prev in operands, (prev, line)


def test_questions_are_unique_after_normalisation(problems) -> None:
    keys = [normalize_question(p.question) for p in problems]
    assert len(set(keys)) == len(keys)
    assert normalize_question("  A  b\n\tC ") == normalize_question("a B c")


def test_variety_of_templates_and_steps(problems) -> None:
    assert len(TEMPLATES) >= 6 and len(set(TEMPLATES)) == len(TEMPLATES)
    used = Counter(p.template for p in problems)
    assert set(used) <= set(TEMPLATES)
    assert len(used) >= 6
    assert min(used.values()) >= 50, used
    steps = Counter(p.n_steps for p in problems)
    assert set(steps) == {1, 2, 3}
    assert steps[2] + steps[3] >= len(problems) / 2, steps
    # Metadata matches the text: one note per step.
    assert all(p.answer.count("<<") == p.n_steps for p in problems)
    ops = Counter(op for p in problems for op in re.findall(r"<<\d+([-+*/])", p.answer))
    assert set(ops) == {"+", "-", "*", "/"}, ops
    assert len({p.question.split()[0] for p in problems}) >= 20  # many names and openings


def test_default_generate_is_mostly_multi_step() -> None:
    rows = generate(1000)
    multi = sum(r["answer"].count("<<") >= 2 for r in rows)
    assert multi >= 500, multi


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("n_steps", [1, 2, 3])
def test_each_template_supports_each_step_count(template: str, n_steps: int) -> None:
    rng = random.Random(template)
    for _ in range(40):
        p = build_problem(rng, n_steps, template=template)
        assert p.template == template and p.n_steps == n_steps
        assert p.answer.count("<<") == n_steps
        assert "{" not in p.question + p.answer and "}" not in p.question + p.answer


def test_step_weights_are_respected() -> None:
    only_three = generate_problems(200, seed=2, step_weights=(0.0, 0.0, 1.0))
    assert {p.n_steps for p in only_three} == {3}
    only_one = generate(100, seed=2, step_weights=(1.0, 0.0, 0.0))
    assert all(r["answer"].count("<<") == 1 for r in only_one)


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_problem(random.Random(0), 0),
        lambda: make_problem(random.Random(0), 4),
        lambda: generate(-1),
        lambda: generate(10, step_weights=(0.0, 0.0, 0.0)),
        lambda: generate(10, step_weights=(1.0, -1.0, 1.0)),
        lambda: synthetic_splits(n_train=-1),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_synthetic_splits_sizes_disjoint_deterministic() -> None:
    splits = synthetic_splits(n_train=1500, n_test=300, seed=4)
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == 1500 and len(splits["test"]) == 300
    train = {normalize_question(r["question"]) for r in splits["train"]}
    test = {normalize_question(r["question"]) for r in splits["test"]}
    assert not train & test
    assert synthetic_splits(n_train=1500, n_test=300, seed=4) == splits
    assert synthetic_splits(n_train=1500, n_test=300, seed=5) != splits


def test_splits_are_made_once_but_returned_as_fresh_rows() -> None:
    first = synthetic_splits(n_train=30, n_test=5, seed=7)
    first["train"][0]["question"] = "changed by a caller"
    first["test"].clear()
    again = synthetic_splits(n_train=30, n_test=5, seed=7)
    assert again["train"][0]["question"] != "changed by a caller" and len(again["test"]) == 5
    assert again == {"train": synthetic.generate(35, seed=7)[:30], "test": again["test"]}
    assert synthetic._stream.cache_info().hits >= 1


def test_default_splits_are_valid_and_disjoint() -> None:
    splits = synthetic_splits()
    assert len(splits["train"]) == 4000 and len(splits["test"]) == 500
    train = {normalize_question(r["question"]) for r in splits["train"]}
    assert all(normalize_question(r["question"]) not in train for r in splits["test"])
    test_steps = Counter(r["answer"].count("<<") for r in splits["test"])
    assert set(test_steps) == {1, 2, 3} and test_steps[2] + test_steps[3] >= 250


def test_overlap_check_raises(monkeypatch) -> None:
    real = synthetic.generate

    def leaky(n: int, seed: int = 0, **kwargs) -> list[dict[str, str]]:
        rows = real(n - 1, seed=seed, **kwargs)
        dup = dict(rows[0], question="  " + rows[0]["question"].upper().replace(" ", "\n "))
        return [*rows, dup]  # the last (test) row repeats the first train row, re-cased

    monkeypatch.setattr(synthetic, "generate", leaky)
    synthetic._stream.cache_clear()  # splits made before came from the real generator
    with pytest.raises(RuntimeError, match="shares 1 question"):
        synthetic_splits(n_train=20, n_test=5, seed=0)

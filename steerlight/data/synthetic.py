"""Seeded GSM8K-format word problems: the offline stand-in for GSM8K.

Each problem is a short story (one of the `TEMPLATES`) told in 1 to 3 arithmetic steps. The
first step combines two fresh numbers; each later step combines the running result with one
new number. The gold answer has one line per step with a GSM8K calculator note, e.g.
``She bakes 3 x 4 = <<3*4=12>>12 cookies.``, then ``#### 12``.

Problems are kept learnable for a tiny model: a new number in a question is at most 15 and
usually one digit (first steps add 2..12 and 2..9, multiply 2..5 by 2..9, subtract 2..9 from
6..15; later steps add, subtract or divide by 2..9 or 2..5, and multiply a running value of at
most 12 by 2 or 3), every intermediate and final result is an integer from 2 to about 60,
division is exact, and the phrasing is regular.
Only the `random.Random` passed in (or seeded here) is used, never the global random state.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from steerlight.data.splits import normalize_question

Row = dict[str, str]

VERSION = 2
"""Bumped whenever the same seed would generate different problems (the tiny model's cache key)."""

# Operators: "r-" is reversed subtraction (new number minus the running value).
_SHOWN = {"+": "+", "-": "-", "*": "x", "/": "/", "r-": "-"}
_NOTE = {"+": "+", "-": "-", "*": "*", "/": "/", "r-": "-"}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_NAMES = (
    ("Mia", "f"),
    ("Emma", "f"),
    ("Lily", "f"),
    ("Ava", "f"),
    ("Sofia", "f"),
    ("Grace", "f"),
    ("Chloe", "f"),
    ("Zoe", "f"),
    ("Nora", "f"),
    ("Ruby", "f"),
    ("Hannah", "f"),
    ("Maya", "f"),
    ("Julia", "f"),
    ("Rosa", "f"),
    ("Aisha", "f"),
    ("Liam", "m"),
    ("Noah", "m"),
    ("Ethan", "m"),
    ("Leo", "m"),
    ("Omar", "m"),
    ("Jack", "m"),
    ("Ben", "m"),
    ("Lucas", "m"),
    ("Sam", "m"),
    ("Max", "m"),
    ("Owen", "m"),
    ("Ravi", "m"),
    ("Diego", "m"),
    ("Tom", "m"),
    ("Hugo", "m"),
)
_TEACHERS = ("Lopez", "Chen", "Patel", "Brown", "Kim", "Novak", "Garcia", "Smith", "Okafor")
_PRONOUNS = {
    "f": {"He": "She", "he": "she", "His": "Her", "his": "her", "him": "her"},
    "m": {"He": "He", "he": "he", "His": "His", "his": "his", "him": "him"},
}


@dataclass(frozen=True)
class Step:
    """One phrasing of one arithmetic step: question sentence, answer line, optional final ask."""

    op: str
    text: str
    solution: str
    ask: str | None = None  # set: the step asks its own question, so it must be the last one
    second_only: bool = False  # "does the same every day": only right after the first step


@dataclass(frozen=True)
class Template:
    """A story: its cast and props, first-step and later-step phrasings, and default questions."""

    name: str
    setup: Callable[[random.Random], dict[str, str]]
    first: tuple[Step, ...]
    later: tuple[Step, ...]
    asks: tuple[str, ...]
    fresh: Callable[[random.Random], dict[str, str]] = field(default=lambda rng: {})


@dataclass(frozen=True)
class Problem:
    """A generated problem with the template and step count that produced it."""

    question: str
    answer: str
    template: str
    n_steps: int

    @property
    def row(self) -> Row:
        """The GSM8K row `{"question", "answer"}`."""
        return {"question": self.question, "answer": self.answer}


def _person(rng: random.Random) -> dict[str, str]:
    """A random first name with matching pronouns."""
    name, gender = rng.choice(_NAMES)
    return {"name": name, **_PRONOUNS[gender]}


def _with(rng: random.Random, **choices: tuple[str, ...]) -> dict[str, str]:
    """A person plus one random pick from each of `choices`."""
    return {**_person(rng), **{key: rng.choice(opts) for key, opts in choices.items()}}


def _shopping_setup(rng: random.Random) -> dict[str, str]:
    item, item2 = rng.sample(
        ["notebooks", "pens", "apples", "socks", "toy cars", "candles", "mugs", "comic books"], 2
    )
    return {**_person(rng), "item": item, "item2": item2}


def _garden_setup(rng: random.Random) -> dict[str, str]:
    item, single, fruit = rng.choice(
        [
            ("tomato plants", "tomato plant", "tomatoes"),
            ("pepper plants", "pepper plant", "peppers"),
            ("strawberry plants", "strawberry plant", "strawberries"),
            ("apple trees", "apple tree", "apples"),
            ("bean plants", "bean plant", "beans"),
            ("sunflowers", "sunflower", "seeds"),
        ]
    )
    return {**_person(rng), "item": item, "single": single, "fruit": fruit}


def _classroom_setup(rng: random.Random) -> dict[str, str]:
    gender = rng.choice("fm")
    title = "Ms." if gender == "f" else "Mr."
    return {
        "name": f"{title} {rng.choice(_TEACHERS)}",
        **_PRONOUNS[gender],
        "supply": rng.choice(["pencils", "stickers", "crayons", "erasers", "markers"]),
    }


def _books_setup(rng: random.Random) -> dict[str, str]:
    kind1, kind2 = rng.sample(
        ["novels", "comic books", "mystery books", "science books", "poetry books", "cookbooks"], 2
    )
    return {**_person(rng), "kind1": kind1, "kind2": kind2}


def _travel_setup(rng: random.Random) -> dict[str, str]:
    verbs, verb = rng.choice(
        [("walks", "walk"), ("cycles", "cycle"), ("runs", "run"), ("drives", "drive")]
    )
    return {**_person(rng), "verbs": verbs, "verb": verb}


_SHOPPING_EXTRAS = (
    "a hat",
    "a scarf",
    "a bottle of juice",
    "a sandwich",
    "a magazine",
    "a bag",
    "a board game",
    "an umbrella",
)
_SAVINGS_THINGS = (
    "a bike",
    "a video game",
    "a guitar",
    "a skateboard",
    "a tablet",
    "a pair of shoes",
    "a telescope",
)

_TEMPLATE_LIST: tuple[Template, ...] = (
    Template(
        name="shopping",
        setup=_shopping_setup,
        fresh=lambda rng: {"extra": rng.choice(_SHOPPING_EXTRAS)},
        first=(
            Step("*", "{name} buys {a} {item} that cost ${b} each.", "{He} pays {calc} dollars."),
            Step(
                "*",
                "{name} buys {a} packs of {item} for ${b} per pack.",
                "The packs cost {calc} dollars.",
            ),
            Step(
                "+",
                "{name} spends ${a} on {item} and ${b} on {item2}.",
                "{He} spends {calc} dollars in total.",
            ),
            Step(
                "-",
                "{name} buys {item} that cost ${a}, using a coupon for ${b} off.",
                "{He} pays {calc} dollars for the {item}.",
            ),
        ),
        later=(
            Step("+", "{He} also buys {extra} for ${b}.", "Now {he} has spent {calc} dollars."),
            Step(
                "+", "Then {he} pays ${b} for {extra}.", "That brings the total to {calc} dollars."
            ),
            Step(
                "-",
                "At the register {he} gets ${b} off.",
                "After the discount {he} pays {calc} dollars.",
            ),
            Step(
                "-",
                "{He} returns one thing and gets ${b} back.",
                "{He} has now spent {calc} dollars.",
            ),
            Step(
                "*",
                "{He} buys the same things every week for {b} weeks.",
                "In {b} weeks {he} spends {calc} dollars.",
                second_only=True,
            ),
            Step(
                "/",
                "{He} splits the cost equally among {b} friends.",
                "Each friend pays {calc} dollars.",
                ask="How much does each friend pay?",
            ),
            Step(
                "r-",
                "{He} pays with ${b}.",
                "{He} gets {calc} dollars in change.",
                ask="How much change does {he} get?",
            ),
        ),
        asks=("How much money does {name} spend?", "How many dollars does {name} spend in total?"),
    ),
    Template(
        name="baking",
        setup=lambda rng: _with(
            rng, item=("cookies", "muffins", "cupcakes", "brownies", "rolls", "scones")
        ),
        first=(
            Step(
                "*",
                "{name} bakes {a} trays of {item} with {b} {item} on each tray.",
                "{He} bakes {calc} {item}.",
            ),
            Step(
                "+",
                "{name} bakes {a} {item} in the morning and {b} {item} in the afternoon.",
                "{He} bakes {calc} {item} in total.",
            ),
            Step(
                "-",
                "{name} bakes {a} {item}, but {b} of them burn.",
                "{He} has {calc} good {item}.",
            ),
        ),
        later=(
            Step("+", "{He} bakes {b} more {item}.", "Now {he} has {calc} {item}."),
            Step(
                "+", "{His} friend brings {b} {item} to share.", "Together they have {calc} {item}."
            ),
            Step("-", "{He} eats {b} of the {item}.", "{He} has {calc} {item} left."),
            Step("-", "{He} gives {b} {item} to {his} neighbours.", "{He} keeps {calc} {item}."),
            Step(
                "*",
                "{He} does the same every day for {b} days.",
                "In {b} days {he} has {calc} {item}.",
                second_only=True,
            ),
            Step(
                "/",
                "{He} packs all the {item} equally into {b} boxes.",
                "Each box has {calc} {item}.",
                ask="How many {item} are in each box?",
            ),
            Step(
                "r-",
                "{He} needs {b} {item} for a party.",
                "{He} needs to bake {calc} more {item}.",
                ask="How many more {item} does {he} need to bake?",
            ),
        ),
        asks=("How many {item} does {name} have now?", "How many {item} does {name} have?"),
    ),
    Template(
        name="savings",
        setup=lambda rng: _with(rng, thing=_SAVINGS_THINGS),
        fresh=lambda rng: {
            "chore": rng.choice(
                ["walking dogs", "washing cars", "mowing lawns", "babysitting", "selling lemonade"]
            ),
            "treat": rng.choice(["a book", "a toy", "a snack", "a movie ticket", "a comic"]),
        },
        first=(
            Step(
                "*",
                "{name} saves ${a} every week for {b} weeks.",
                "{He} saves {calc} dollars.",
            ),
            Step(
                "+",
                "{name} has ${a} in {his} piggy bank, and {his} grandmother gives {him} ${b}.",
                "{He} has {calc} dollars.",
            ),
            Step("-", "{name} has ${a} and spends ${b} on lunch.", "{He} has {calc} dollars left."),
        ),
        later=(
            Step("+", "{He} earns ${b} more by {chore}.", "Now {he} has {calc} dollars."),
            Step(
                "+",
                "{His} aunt gives {him} ${b} for {his} birthday.",
                "{He} now has {calc} dollars.",
            ),
            Step("-", "{He} spends ${b} on {treat}.", "{He} has {calc} dollars left."),
            Step("-", "{He} lends ${b} to a friend.", "{He} keeps {calc} dollars."),
            Step(
                "/",
                "{He} shares the money equally among {b} friends.",
                "Each friend gets {calc} dollars.",
                ask="How much does each friend get?",
            ),
            Step(
                "r-",
                "{He} wants to buy {thing} that costs ${b}.",
                "{He} needs {calc} more dollars.",
                ask="How much more money does {he} need?",
            ),
        ),
        asks=("How much money does {name} have now?", "How many dollars does {name} have?"),
    ),
    Template(
        name="travel",
        setup=_travel_setup,
        first=(
            Step(
                "*",
                "On {day}, {name} {verbs} for {a} hours at {b} miles per hour.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
            Step(
                "+",
                "On {day}, {name} {verbs} {a} miles in the morning and {b} miles in the evening.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
            Step(
                "-",
                "On {day}, {name} plans to {verb} {a} miles but stops {b} miles short.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
        ),
        later=(
            Step(
                "+",
                "On {day}, {he} {verbs} {b} miles more than the day before.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
            Step(
                "-",
                "On {day}, {he} {verbs} {b} fewer miles than the day before.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
            Step(
                "*",
                "On {day}, {he} {verbs} {b} times as far as the day before.",
                "On {day}, {he} {verbs} {calc} miles.",
            ),
            Step(
                "/",
                "On {day}, {he} {verbs} the same distance as the day before in {b} equal parts.",
                "Each part is {calc} miles.",
                ask="How many miles long is each part?",
            ),
            Step(
                "r-",
                "{His} goal for {prev} is {b} miles.",
                "{He} is {calc} miles short.",
                ask="How many miles short of {his} goal is {he} on {prev}?",
            ),
        ),
        asks=("How many miles does {name} {verb} on {day}?",),
    ),
    Template(
        name="garden",
        setup=_garden_setup,
        first=(
            Step(
                "*",
                "{name} plants {a} rows of {item} with {b} plants in each row.",
                "{He} plants {calc} {item}.",
            ),
            Step(
                "+",
                "{name} plants {a} {item} on Saturday and {b} {item} on Sunday.",
                "{He} plants {calc} {item} in total.",
            ),
            Step(
                "-",
                "{name} plants {a} {item}, but {b} of them do not grow.",
                "{He} has {calc} {item} left.",
            ),
        ),
        later=(
            Step(
                "+", "{He} buys {b} more {item} and plants them too.", "Now {he} has {calc} {item}."
            ),
            Step(
                "+",
                "{His} neighbour gives {him} {b} {item}, which {he} plants.",
                "{He} now has {calc} {item}.",
            ),
            Step("-", "Rabbits eat {b} of the {item}.", "{He} has {calc} {item} left."),
            Step("-", "{He} gives {b} {item} to a friend.", "{He} keeps {calc} {item}."),
            Step(
                "*",
                "Each {single} grows {b} {fruit}.",
                "{He} picks {calc} {fruit}.",
                ask="How many {fruit} does {he} pick?",
            ),
            Step(
                "/",
                "{He} moves all the {item} into {b} beds with the same number in each.",
                "Each bed has {calc} {item}.",
                ask="How many {item} are in each bed?",
            ),
            Step(
                "r-",
                "{He} wants to have {b} {item}.",
                "{He} needs {calc} more {item}.",
                ask="How many more {item} does {he} need?",
            ),
        ),
        asks=("How many {item} does {name} have now?",),
    ),
    Template(
        name="classroom",
        setup=_classroom_setup,
        first=(
            Step(
                "*",
                "{name} has {a} tables in {his} classroom with {b} students at each table.",
                "There are {calc} students.",
            ),
            Step(
                "+",
                "{name}'s class has {a} boys and {b} girls.",
                "There are {calc} students in the class.",
            ),
            Step(
                "-",
                "{name}'s class has {a} students, and {b} of them are absent today.",
                "There are {calc} students in class.",
            ),
        ),
        later=(
            Step("+", "{b} more students join the class.", "Now there are {calc} students."),
            Step(
                "+",
                "{b} students from another class come to visit.",
                "There are {calc} students in the room.",
            ),
            Step("-", "{b} students leave early for a game.", "There are {calc} students left."),
            Step(
                "*",
                "Each student needs {b} {supply}.",
                "{He} needs {calc} {supply}.",
                ask="How many {supply} does {name} need?",
            ),
            Step(
                "/",
                "{name} splits the students into {b} equal teams.",
                "Each team has {calc} students.",
                ask="How many students are in each team?",
            ),
            Step(
                "r-",
                "The room has {b} chairs.",
                "There are {calc} empty chairs.",
                ask="How many chairs are empty?",
            ),
        ),
        asks=("How many students are in the class now?", "How many students are there now?"),
    ),
    Template(
        name="books",
        setup=_books_setup,
        first=(
            Step(
                "*",
                "{name} has {a} shelves with {b} books on each shelf.",
                "{He} has {calc} books.",
            ),
            Step("+", "{name} has {a} {kind1} and {b} {kind2}.", "{He} has {calc} books."),
            Step(
                "-",
                "{name} has {a} books and lends {b} of them to friends.",
                "{He} has {calc} books left.",
            ),
        ),
        later=(
            Step("+", "{He} buys {b} more books at a book fair.", "Now {he} has {calc} books."),
            Step("+", "For {his} birthday {he} gets {b} new books.", "{He} now has {calc} books."),
            Step(
                "-", "{He} donates {b} books to the school library.", "{He} has {calc} books left."
            ),
            Step("-", "{He} sells {b} old books.", "{He} keeps {calc} books."),
            Step(
                "*",
                "{His} cousin has {b} times as many books.",
                "{His} cousin has {calc} books.",
                ask="How many books does {his} cousin have?",
            ),
            Step(
                "/",
                "{He} packs all the books into {b} boxes with the same number in each.",
                "Each box has {calc} books.",
                ask="How many books are in each box?",
            ),
            Step(
                "r-",
                "{His} new bookcase holds {b} books.",
                "The bookcase has room for {calc} more books.",
                ask="How many more books can fit in the bookcase?",
            ),
        ),
        asks=("How many books does {name} have now?",),
    ),
    Template(
        name="farm",
        setup=lambda rng: _with(rng, bird=("hens", "ducks")),
        first=(
            Step(
                "*",
                "{name} has {a} {bird}, and each one lays {b} eggs a week.",
                "The {bird} lay {calc} eggs.",
            ),
            Step(
                "+",
                "{name} collects {a} eggs in the morning and {b} eggs in the afternoon.",
                "{He} collects {calc} eggs.",
            ),
            Step(
                "-",
                "{name} collects {a} eggs, but {b} of them are cracked.",
                "{He} has {calc} good eggs.",
            ),
        ),
        later=(
            Step("+", "{He} buys {b} eggs from a neighbour.", "Now {he} has {calc} eggs."),
            Step("+", "{His} sister brings {b} more eggs.", "{He} now has {calc} eggs."),
            Step("-", "{He} uses {b} eggs to bake a cake.", "{He} has {calc} eggs left."),
            Step("-", "{He} sells {b} eggs at the market.", "{He} keeps {calc} eggs."),
            Step(
                "*",
                "{He} sells each egg for ${b}.",
                "{He} makes {calc} dollars.",
                ask="How much money does {he} make?",
            ),
            Step(
                "/",
                "{He} packs the eggs equally into {b} cartons.",
                "Each carton has {calc} eggs.",
                ask="How many eggs are in each carton?",
            ),
            Step(
                "r-",
                "A bakery orders {b} eggs.",
                "{He} needs {calc} more eggs.",
                ask="How many more eggs does {he} need?",
            ),
        ),
        asks=("How many eggs does {name} have now?",),
    ),
    Template(
        name="reading",
        setup=_person,
        first=(
            Step(
                "*",
                "On {day}, {name} reads {a} chapters with {b} pages each.",
                "On {day}, {he} reads {calc} pages.",
            ),
            Step(
                "+",
                "On {day}, {name} reads {a} pages before lunch and {b} pages after lunch.",
                "On {day}, {he} reads {calc} pages.",
            ),
            Step(
                "-",
                "On {day}, {name} plans to read {a} pages but skips {b} of them.",
                "On {day}, {he} reads {calc} pages.",
            ),
        ),
        later=(
            Step(
                "+",
                "On {day}, {he} reads {b} more pages than the day before.",
                "On {day}, {he} reads {calc} pages.",
            ),
            Step(
                "-",
                "On {day}, {he} reads {b} fewer pages than the day before.",
                "On {day}, {he} reads {calc} pages.",
            ),
            Step(
                "*",
                "On {day}, {he} reads {b} times as many pages as the day before.",
                "On {day}, {he} reads {calc} pages.",
            ),
            Step(
                "/",
                "On {day}, {he} reads the same number of pages as the day before "
                "in {b} equal sittings.",
                "Each sitting is {calc} pages.",
                ask="How many pages does {he} read in each sitting?",
            ),
            Step(
                "r-",
                "{His} goal for {prev} is {b} pages.",
                "{He} is {calc} pages short.",
                ask="How many pages short of {his} goal is {he} on {prev}?",
            ),
        ),
        asks=("How many pages does {name} read on {day}?",),
    ),
)

TEMPLATES: tuple[str, ...] = tuple(t.name for t in _TEMPLATE_LIST)
_BY_NAME = {t.name: t for t in _TEMPLATE_LIST}


def _apply(op: str, x: int, y: int) -> int:
    """The integer result of `x op y` (`r-` has been resolved to `-` with swapped operands)."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if x % y:
        raise AssertionError(f"inexact division {x}/{y}")
    return x // y


def _calc(op: str, x: int, y: int) -> tuple[str, int]:
    """Visible working with its calculator note, e.g. `3 x 4 = <<3*4=12>>12`, and the result."""
    r = _apply(_NOTE[op], x, y)
    return f"{x} {_SHOWN[op]} {y} = <<{x}{_NOTE[op]}{y}={r}>>{r}", r


def _first_operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Two fresh operands for a first step: small, with a result of at least 2."""
    if op == "*":
        return rng.randint(2, 5), rng.randint(2, 9)
    if op == "+":
        return rng.randint(2, 12), rng.randint(2, 9)
    a = rng.randint(6, 15)
    return a, rng.randint(2, min(9, a - 2))


def _later_operand(rng: random.Random, op: str, v: int) -> int | None:
    """A new operand for combining with running value `v`, or None when `op` does not fit `v`."""
    if op == "+":
        return rng.randint(2, 9)
    if op == "-":
        return rng.randint(2, min(9, v - 2)) if v >= 4 else None
    if op == "*":
        return rng.randint(2, 3) if v <= 12 else None
    if op == "/":
        divisors = [d for d in range(2, 6) if v % d == 0 and v // d >= 2]
        return rng.choice(divisors) if divisors else None
    return v + rng.randint(2, 9)  # "r-": the new number minus v


def build_problem(rng: random.Random, n_steps: int, template: str | None = None) -> Problem:
    """One problem of `n_steps` steps from `template` (random when None), with its metadata."""
    if n_steps not in (1, 2, 3):
        raise ValueError(f"n_steps must be 1, 2 or 3, got {n_steps!r}")
    if template is not None and template not in _BY_NAME:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    tpl = _BY_NAME[template] if template is not None else rng.choice(_TEMPLATE_LIST)
    ctx = tpl.setup(rng)
    start = rng.randint(0, len(_DAYS) - n_steps)
    sentences: list[str] = []
    lines: list[str] = []
    used: set[Step] = set()
    ask = rng.choice(tpl.asks)
    value = 0
    for i in range(n_steps):
        ctx.update(tpl.fresh(rng), day=_DAYS[start + i], prev=_DAYS[start + max(i - 1, 0)])
        last = i == n_steps - 1
        if i == 0:
            op = rng.choice(sorted({s.op for s in tpl.first}))
            step = rng.choice([s for s in tpl.first if s.op == op])
            a, b = _first_operands(rng, op)
            working, value = _calc(op, a, b)
        else:
            fits = [
                s for s in tpl.later if (last or s.ask is None) and (i == 1 or not s.second_only)
            ]
            operands = {op: _later_operand(rng, op, value) for op in sorted({s.op for s in fits})}
            op = rng.choice(sorted(o for o, b in operands.items() if b is not None))
            b = operands[op]
            assert b is not None
            options = [s for s in fits if s.op == op]
            step = rng.choice([s for s in options if s not in used] or options)
            x, y = (b, value) if op == "r-" else (value, b)
            a = value
            working, value = _calc(op, x, y)
        used.add(step)
        fmt = {**ctx, "a": a, "b": b, "calc": working}
        sentences.append(step.text.format(**fmt))
        lines.append(step.solution.format(**fmt))
        if last and step.ask is not None:
            ask = step.ask
    question = " ".join(sentences) + " " + ask.format(**ctx)
    answer = "\n".join([*lines, f"#### {value}"])
    return Problem(question=question, answer=answer, template=tpl.name, n_steps=n_steps)


def make_problem(rng: random.Random, n_steps: int) -> dict[str, str]:
    """One GSM8K-format problem `{"question", "answer"}` with `n_steps` arithmetic steps."""
    return build_problem(rng, n_steps).row


def generate_problems(
    n: int, seed: int = 0, step_weights: tuple[float, float, float] = (0.34, 0.33, 0.33)
) -> list[Problem]:
    """`n` problems with unique normalised questions and their metadata, deterministic in `seed`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = tuple(float(w) for w in step_weights)
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"step_weights must be 3 non-negative numbers, not all 0: {step_weights}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only generate {len(out)} of {n} unique problems")
        (n_steps,) = rng.choices((1, 2, 3), weights=weights)
        problem = build_problem(rng, n_steps)
        key = normalize_question(problem.question)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def generate(
    n: int, seed: int = 0, step_weights: tuple[float, float, float] = (0.34, 0.33, 0.33)
) -> list[dict[str, str]]:
    """`n` GSM8K rows with unique questions; 1/2/3 steps drawn from `step_weights`."""
    return [p.row for p in generate_problems(n, seed=seed, step_weights=step_weights)]


@functools.lru_cache(maxsize=4)
def _stream(n: int, seed: int) -> tuple[tuple[str, str], ...]:
    """`generate(n, seed)` as immutable (question, answer) pairs, made once per process: every
    search trial builds its data module again, and generating was 6% of a tiny-model trial."""
    return tuple((r["question"], r["answer"]) for r in generate(n, seed=seed))


def synthetic_splits(
    n_train: int = 4000, n_test: int = 500, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Disjoint `{"train", "test"}` rows cut from one unique stream; raises if they overlap."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be >= 0, got n_train={n_train}, n_test={n_test}")
    rows = [{"question": q, "answer": a} for q, a in _stream(n_train + n_test, seed)]
    splits = {"train": rows[:n_train], "test": rows[n_train:]}
    train_keys = {normalize_question(r["question"]) for r in splits["train"]}
    leaked = [
        r["question"] for r in splits["test"] if normalize_question(r["question"]) in train_keys
    ]
    if leaked:
        raise RuntimeError(
            f"synthetic test split shares {len(leaked)} question(s) with train, e.g. {leaked[0]!r}"
        )
    return splits

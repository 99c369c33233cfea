"""The model layer knows no steering: generation code never reads or writes steering objects.

Decoding loops in `steerlight.model` are handed a `steerlight.model.columns.Columns` (prompt
widths, the columns of each forward) and plain flags (`fixed_rows`); the steering side decides
what those are. Issue 28: a parameter typed `Any` called `steering` hid the dependency from the
import graph, so it is checked here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "steerlight" / "model"


def _modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(MODEL.rglob("*.py"))}


def _imported(node: ast.AST) -> list[str]:
    """The absolute module names an import statement names (relative ones resolved from
    `steerlight.model`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = "steerlight.model".split(".")
        base = base[: len(base) - node.level + 1] if node.level else []
        module = ".".join([*base, *([node.module] if node.module else [])])
        return [module, *(f"{module}.{a.name}" for a in node.names)]
    return []


def test_model_modules_import_no_steering():
    found = [
        f"{name}:{node.lineno} {n}"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        for n in _imported(node)
        if n == "steerlight.steering" or n.startswith("steerlight.steering.")
    ]
    assert not found, f"model modules import steering: {found}"


def _steering_params(tree: ast.Module) -> list[ast.arg]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            out += [
                arg
                for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                if arg is not None and "steering" in arg.arg.lower()
            ]
    return out


def test_no_model_function_takes_a_steering_object():
    """No parameter named `steering` (or `*steering*`) in model code, whatever its annotation:
    an `Any`-typed one is how model code wrote steering state before issue 28."""
    found = [
        f"{name}:{arg.lineno} {arg.arg}: {ast.unparse(arg.annotation) if arg.annotation else '?'}"
        for name, tree in _modules().items()
        for arg in _steering_params(tree)
    ]
    assert not found, f"model functions take steering objects: {found}"


def test_the_rule_sees_an_any_typed_steering_parameter():
    tree = ast.parse("def f(x, steering: Any = None):\n    steering.prompt_len = 3\n")
    (arg,) = _steering_params(tree)
    assert ast.unparse(arg.annotation) == "Any"


def test_model_code_touches_no_steering_attribute():
    """No attribute read or write on a name called `steering` in model code."""
    found = [
        f"{name}:{node.lineno} {ast.unparse(node)}"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and "steering" in node.value.id.lower()
    ]
    assert not found, f"model code uses steering objects: {found}"

"""The package's shape: no import cycles, data flowing one way, modules a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "steerlight"

# Lower layers never import higher ones: data -> activations -> method -> hooks -> generation
# -> metric -> report, with the CLI, the search and the embedded model on top.
FORBIDDEN = {
    "steerlight.model": ("steering", "eval", "search", "tiny", "module", "cli", "data"),
    "steerlight.data": ("steering", "eval", "search", "module", "cli"),
    "steerlight.steering": ("eval", "search", "tiny", "module", "cli"),
    "steerlight.eval": ("search", "tiny", "module", "cli"),
    "steerlight.tiny": ("steering", "eval", "search", "module", "cli"),
    "steerlight.layout": ("data", "model", "steering", "eval", "search", "tiny", "module", "cli"),
}
DATA_TABLES = {"steerlight/data/synthetic.py"}  # templates of word problems, not logic
MAX_MODULE_LINES = 430
MAX_STEEREDLM_LINES = 330


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every steerlight module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from steerlight.x import y` imports the module steerlight.x.y if there is one
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        found |= {n for n in names if n == "steerlight" or n.startswith("steerlight.")}
    return found


def graph() -> dict[str, set[str]]:
    return {name: imports(path) & set(MODULES) - {name} for name, path in MODULES.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, targets in graph().items():
        for layer, banned in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                wrong += [
                    f"{module} imports {t}"
                    for t in targets
                    for b in banned
                    if t == f"steerlight.{b}" or t.startswith(f"steerlight.{b}.")
                ]
    assert not wrong, wrong


def test_modules_stay_small_enough_to_read():
    long = {}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE.parent))
        n = len(path.read_text().splitlines())
        if rel not in DATA_TABLES and n > MAX_MODULE_LINES:
            long[rel] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
    tree = ast.parse((PACKAGE / "module.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SteeredLM"]
    assert cls.end_lineno - cls.lineno + 1 <= MAX_STEEREDLM_LINES


def test_the_checker_sees_a_cycle(tmp_path):
    """The cycle check is not vacuous: `search` imports `cli`, and a cycle back would show."""
    edges = graph()
    assert "steerlight.cli" in edges["steerlight.search.command"]
    assert "steerlight.module" in edges["steerlight.cli"]
    assert "steerlight.steering.activations" in edges["steerlight.steering.fit"]

"""``python -m steerlight.tiny``: install (or build) and cache the tiny model, print its folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from steerlight.tiny.cache import tiny_model_path
from steerlight.tiny.evaluation import default_test_rows, eval_exemplars, evaluate
from steerlight.tiny.recipe import TinyRecipe

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    """``python -m steerlight.tiny``'s flags; the ``--recipe.*`` help comes from `TinyRecipe`."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(
        prog="python -m steerlight.tiny",
        description="Install the embedded tiny GSM8K model in the cache (the copy steerlight "
        "ships; other recipes are built once), then print its folder. Every --recipe.* flag "
        "changes the cache key; the defaults are the shipped model's recipe.",
        default_env=False,
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Train it again from the recipe, even if a cached or shipped copy exists, and say "
        "whether the weights match the shipped copy.",
    )
    parser.add_argument(
        "--eval",
        type=int,
        default=0,
        help="Then score greedy exact match (strict '#### N') on the first N synthetic test "
        "questions (0: skip; 500: the whole default test split).",
    )
    parser.add_argument("--shots", type=int, default=0, help="Exemplars (from train) for --eval.")
    parser.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        type=int,
        default=160,
        help="Generation limit for --eval.",
    )
    parser.add_class_arguments(TinyRecipe, "recipe")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from steerlight.console import show_logs

    """Build (or find) the tiny model, print its folder and, with ``--eval``, its accuracy."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    recipe: TinyRecipe = parser.instantiate(cfg).recipe
    show_logs()  # the build's progress lines and its notice
    path = tiny_model_path(recipe, force=cfg.force)
    print(path, flush=True)
    if cfg.force:
        print(compare_with_shipped(path, recipe), flush=True)
    if cfg.eval > 0:
        test = default_test_rows(recipe)[: cfg.eval]
        exemplars = eval_exemplars(recipe, cfg.shots)
        records = evaluate(path, test, exemplars, max_new_tokens=cfg.max_new_tokens)
        acc = sum(r["correct"] for r in records) / len(records)
        print(
            f"accuracy ({cfg.shots}-shot, strict, {len(records)} test questions): {acc:.3f}",
            flush=True,
        )


def compare_with_shipped(path: Path, recipe: TinyRecipe) -> str:
    """Whether the build at `path` has the bytes of the copy steerlight ships for `recipe`."""
    from steerlight.tiny.cache import SHIPPED, _is_complete, weights_sha256

    if not _is_complete(SHIPPED, recipe):
        return f"(steerlight ships no build of recipe {recipe.key()} to compare with)"
    built, shipped = weights_sha256(path), weights_sha256(SHIPPED)
    if built == shipped:
        return f"the same weights as the shipped copy in {SHIPPED} (sha256 {built[:16]})"
    return (
        f"weights differ from the shipped copy in {SHIPPED} (sha256 {built[:16]} vs "
        f"{shipped[:16]}; another torch or CPU kernel rounds differently): --eval 500 scores "
        "this build, the shipped one scores its tiny_recipe.json's accuracy"
    )


if __name__ == "__main__":
    main()

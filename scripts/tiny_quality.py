"""Measure the embedded tiny model: build wall time and greedy exact match on the synthetic test.

    python scripts/tiny_quality.py                     # build the default recipe fresh, score it
    python scripts/tiny_quality.py --reuse             # score the cached build (no rebuild)
    python scripts/tiny_quality.py --recipe.steps 800 --home /tmp/tiny     # try a variant

It prints the build seconds (wall and CPU; the load average shows whether other processes
competed for the cores), then strict exact match (``#### N``) on the default synthetic test
split, overall and by number of steps, zero-shot and with 2 exemplars from the training rows.
The issue's bar: >= 30% zero-shot, built in <= 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's steerlight


def main() -> None:
    from jsonargparse import ArgumentParser, set_parsing_settings

    from steerlight.tiny import TinyRecipe

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument(
        "--home", type=str | None, default=None, help="STEERLIGHT_HOME for this run."
    )
    parser.add_argument("--reuse", action="store_true", help="Score the cached build.")
    parser.add_argument("--limit-test", type=int, default=500, help="Test questions to score.")
    parser.add_argument("--shots", type=list[int], default=[0, 2], help="Exemplar counts.")
    parser.add_argument("--json", type=str | None, default=None, help="Also write JSON here.")
    parser.add_class_arguments(TinyRecipe, "recipe")
    args = parser.parse_args()
    recipe: TinyRecipe = parser.instantiate_classes(args).recipe
    if args.home:
        os.environ["STEERLIGHT_HOME"] = args.home
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from steerlight.tiny import default_test_rows, eval_exemplars, evaluate, tiny_model_path

    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    path = tiny_model_path(recipe, force=not args.reuse)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    meta = json.loads((Path(path) / "tiny_recipe.json").read_text())
    result: dict = {
        "path": str(path),
        "recipe": dataclasses.asdict(recipe),
        "build": meta["metrics"],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "accuracy": {},
    }
    print(f"model: {path}")
    metrics = meta["metrics"]
    print(f"parameters: {metrics['parameters']:,}  final loss: {metrics['final_loss']:.3f}")
    if not args.reuse:
        print(
            f"build: {wall:.1f} s wall, {cpu:.1f} s CPU; load average before "
            f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
        )
    else:
        print(f"build (recorded when built): {meta['metrics']['build_seconds']} s")

    test = default_test_rows(recipe)[: args.limit_test]
    for shots in args.shots:
        exemplars = eval_exemplars(recipe, shots)
        start = time.perf_counter()
        records = evaluate(path, test, exemplars)
        by_steps: dict[int, list[bool]] = defaultdict(list)
        for row, rec in zip(test, records, strict=True):
            by_steps[row["answer"].count("<<")].append(rec["correct"])
        overall = sum(r["correct"] for r in records) / len(records)
        parts = ", ".join(
            f"{k} step(s) {sum(v) / len(v):.3f} (n={len(v)})" for k, v in sorted(by_steps.items())
        )
        print(
            f"{shots}-shot exact match: {overall:.3f} on {len(records)} test questions "
            f"[{parts}] ({time.perf_counter() - start:.0f} s)"
        )
        wrong = next((r for r in records if not r["correct"]), None)
        if wrong is not None:
            print(f"  e.g. wrong: {wrong['completion']!r} (gold {wrong['gold']})")
        result["accuracy"][f"{shots}-shot"] = {
            "overall": overall,
            "by_steps": {k: sum(v) / len(v) for k, v in sorted(by_steps.items())},
        }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Put the default tiny model's build into the package, as `steerlight/tiny/shipped/`.

    python scripts/ship_tiny.py                        # train it in a fresh home, score, copy
    python scripts/ship_tiny.py --build ~/.cache/steerlight/tiny/<key>   # ship that build

It trains the default recipe in a temporary STEERLIGHT_HOME (or takes `--build`, which must be a
build of the default recipe), scores greedy strict exact match on the 500 default synthetic test
questions, refuses to ship below `--min-accuracy`, and copies the build's files with the accuracy
added to its tiny_recipe.json. Run it whenever the recipe, `BUILD_FORMAT` or the synthetic
generator changes: `tests/tiny/test_tiny_shipped.py` fails until the shipped copy is the
default recipe's build again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's steerlight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=None, help="An existing build to ship.")
    parser.add_argument("--min-accuracy", type=float, default=0.40, help="The quality bar.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from steerlight.tiny import TinyRecipe, default_test_rows, evaluate
    from steerlight.tiny.cache import _MARKER, SHIPPED, SHIPPED_FILES, _is_complete

    recipe = TinyRecipe()
    build = args.build
    if build is None:
        os.environ["STEERLIGHT_HOME"] = tempfile.mkdtemp(prefix="steerlight-ship-")
        from steerlight.tiny import tiny_model_path

        build = tiny_model_path(recipe, force=True)
    if not _is_complete(build, recipe):
        sys.exit(f"{build} is not a complete build of the default recipe {recipe.key()}")
    records = evaluate(build, default_test_rows(recipe))
    accuracy = sum(r["correct"] for r in records) / len(records)
    print(f"{build}: strict exact match {accuracy:.3f} on {len(records)} test questions")
    if accuracy < args.min_accuracy:
        sys.exit(f"below the bar {args.min_accuracy}: not shipped")
    SHIPPED.mkdir(exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(build / name, SHIPPED / name)
    marker = json.loads((build / _MARKER).read_text())
    marker["accuracy"] = {"strict_exact_match": accuracy, "test_questions": len(records)}
    (SHIPPED / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    print(f"shipped into {SHIPPED}")


if __name__ == "__main__":
    main()

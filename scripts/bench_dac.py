"""DAC (three KV caches) vs CAA vs DAC by definition: now a part of `scripts/bench`.

Kept as a thin wrapper for its documented command; it runs the bench's generation parts with the
naive reference on (``--naive-repeats N`` maps to the bench's ``--naive-dac-repeats N``).

    python scripts/bench_dac.py            # = bench --parts hook,dac --naive-dac-repeats 1
    python scripts/bench_dac.py --quick    # smoke run: tiny model, a few tokens
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench"
"""The benchmark package: a folder that Python runs through its __main__.py."""


def run(argv: list[str]) -> None:
    """``python scripts/bench --parts hook,dac --naive-dac-repeats 1 ARGV`` in this process."""
    argv = ["--naive-dac-repeats" if a == "--naive-repeats" else a for a in argv]
    # run_path runs the folder as `python scripts/bench` would: the folder first on sys.path
    # (its modules import each other by bare name) and the arguments in sys.argv.
    before = sys.argv
    sys.argv = [str(BENCH), "--parts", "hook,dac", "--naive-dac-repeats", "1", *argv]
    try:
        runpy.run_path(str(BENCH), run_name="__main__")
    finally:
        sys.argv = before


if __name__ == "__main__":
    run(sys.argv[1:])

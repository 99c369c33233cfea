"""DAC (three KV caches) vs CAA vs DAC by definition: now a part of `scripts/bench.py`.

Kept as a thin wrapper for its documented command; it runs bench.py's generation parts with the
naive reference on (``--naive-repeats N`` maps to bench.py's ``--naive-dac-repeats N``).

    python scripts/bench_dac.py            # = bench.py --parts hook,dac --naive-dac-repeats 1
    python scripts/bench_dac.py --quick    # smoke run: tiny model, a few tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import main  # noqa: E402  (the folder above is on the path only now)


def run(argv: list[str]) -> None:
    argv = ["--naive-dac-repeats" if a == "--naive-repeats" else a for a in argv]
    main(["--parts", "hook,dac", "--naive-dac-repeats", "1", *argv])


if __name__ == "__main__":
    run(sys.argv[1:])

"""The one exception type for bad user input, and how command-line entry points report it."""

from __future__ import annotations

import sys
from collections.abc import Callable


class SteerlightError(ValueError):
    """Bad input from the user (a file, a config value, a flag); the CLI prints only its message."""


def one_line(message: str) -> str:
    """`message` on one line: its lines joined with spaces, indentation dropped."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def exit_on_error(prog: str, main: Callable[[], object]) -> None:
    """Run `main`; a SteerlightError becomes one line on stderr and exit status 2.

    With `--verbose` anywhere on the command line the traceback is shown instead.
    """
    verbose = "--verbose" in sys.argv
    if verbose:
        sys.argv.remove("--verbose")
    try:
        main()
    except SteerlightError as err:
        if verbose:
            raise
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # a full disk, a read-only folder, a file where a folder belongs
        if verbose:
            raise
        where = f"cannot use {err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror or err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

"""The one exception type for bad user input, and how command-line entry points report it."""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
        with _thread_write_errors() as failed:
            main()
        if failed:  # a thread's write failed and the main thread never wrote again
            raise failed[0]
    except SteerlightError as err:
        if verbose:
            raise
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # a full disk, a read-only folder, a file where a folder belongs
        if verbose:
            raise
        print(f"{prog}: error: {os_error_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def os_error_line(err: OSError) -> str:
    """An OSError in one line naming its file; a full disk names the folder and what to do."""
    path = err.filename or _written_path(err)
    if err.errno == errno.ENOSPC and path:
        folder, name = os.path.split(os.path.abspath(os.fsdecode(path)))
        return (
            f"no space left on the device of {folder} (writing {name}): free some space there, "
            "or write the run elsewhere (trainer.default_root_dir, the logger's save_dir, --root "
            "or $STEERLIGHT_HOME)"
        )
    return f"cannot use {path}: {err.strerror or err}" if path else str(err.strerror or err)


_PATH_LOCALS = ("filename", "filepath", "file_path", "path")


def _written_path(err: BaseException) -> str | None:
    """The file a write error without a `filename` was writing (a write to an open file, as
    TensorBoard's and Lightning's writers do): the innermost frame of its traceback, also of the
    thread that raised it first, that holds the path in a local variable."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, bytes, os.PathLike)) and os.sep in os.fsdecode(value):
                return os.fsdecode(value)
    return None


WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
"""What a background writer hits on a full, read-only or failing disk."""


@contextmanager
def _thread_write_errors() -> Iterator[list[OSError]]:
    """A background thread's write error (TensorBoard's event writer on a full disk) prints no
    traceback of its own: the main thread raises the same error at its next write and reports
    it in one line; the errors are yielded, for one that the main thread never saw. Any other
    error of a thread (a broken pipe, a refused connection) keeps its traceback."""
    failed: list[OSError] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRORS:
            failed.append(args.exc_value)
        else:
            before(args)

    threading.excepthook = hook
    try:
        yield failed
    finally:
        threading.excepthook = before

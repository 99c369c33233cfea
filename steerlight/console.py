"""What a command prints: steerlight's log records as plain lines on stdout.

The Python API only logs (`logging.getLogger("steerlight...")`); a command line calls
`show_logs()` so that progress, per-trial lines and results appear, in a terminal or a log file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

_HANDLER_NAME = "steerlight-console"


def show_logs(level: int = logging.INFO) -> None:
    """Print steerlight's records at `level` and above on stdout, once per process.

    `--quiet` anywhere on the command line (taken out of `sys.argv`) keeps the results and
    errors but drops the progress lines and Lightning's notices.
    """
    if "--quiet" in sys.argv:
        sys.argv.remove("--quiet")
        for name in ("steerlight.progress", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logger = logging.getLogger("steerlight")
    logger.setLevel(level)
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _Stdout()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is when a record comes (a test's capture,
    a redirected stream), not to the stream that was current when it was made."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextlib.contextmanager
def lightning_banners_once() -> Iterator[None]:
    """Within the block, Lightning's notices ("GPU available", "Seed set to 0", "`Trainer.fit`
    stopped") and steerlight's own repeated lines (the data summary) appear once, not once per
    Trainer (a search builds one per trial)."""
    once = _Once()
    names = ("lightning.pytorch", "lightning.fabric", "steerlight")
    handlers = [h for name in names for h in logging.getLogger(name).handlers]
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)


def lightning_notice(record: logging.LogRecord) -> bool:
    """A filter on Lightning's notices: drops its litlogger advert and says what loading a
    checkpoint loads (steerlight's hold the steering state, never the model's weights)."""
    message = record.getMessage()
    if message.startswith("Loaded model weights from the checkpoint at "):
        path = message.rpartition(" at ")[2]
        record.msg, record.args = f"Loaded the steering state (no model weights) from {path}", ()
    return "litlogger" not in message


@contextlib.contextmanager
def lightning_as_log_records() -> Iterator[None]:
    """Within the block (the Python API), Lightning's notices are plain log records that the
    caller's logging shows or not, like steerlight's: without it Lightning prints them on
    stderr itself, through the handlers it adds (on `lightning`, and on `lightning.pytorch`
    and `lightning.fabric` where the root logger has none)."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [], True
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Pace:
    """Counts work done against a total and says when a progress line is due: every
    `fraction` of the total or every `every_s` seconds, whichever comes first, and at the end."""

    def __init__(self, total: int, every_s: float = 30.0, fraction: float = 0.1) -> None:
        self.total, self.every_s, self.fraction = max(total, 1), every_s, fraction
        self.done, self.start = 0, time.monotonic()
        self._last_t, self._last_done = self.start, 0

    def advance(self, n: int) -> bool:
        """Add `n` units; True when a line is due."""
        self.done += n
        now = time.monotonic()
        due = (
            self.done >= self.total
            or self.done - self._last_done >= self.fraction * self.total
            or now - self._last_t >= self.every_s
        )
        if due:
            self._last_t, self._last_done = now, self.done
        return due

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def line(self, what: str, unit: str) -> str:
        """`what: 40/120 unit (33%), 12.5 unit/s, ETA 0:06` (or `in 0:09` at the end)."""
        rate = self.done / max(self.elapsed, 1e-9)
        share = f"{self.done}/{self.total} {unit} ({100 * self.done / self.total:.0f}%)"
        if self.done >= self.total:
            return f"{what}: {share}, {rate:.3g} {unit}/s, in {_clock(self.elapsed)}"
        eta = (self.total - self.done) / max(rate, 1e-9)
        return f"{what}: {share}, {rate:.3g} {unit}/s, ETA {_clock(eta)}"

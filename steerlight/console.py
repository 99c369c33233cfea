"""What a command prints: steerlight's log records as plain lines on stdout.

The Python API only logs (`logging.getLogger("steerlight...")`); a command line calls
`show_logs()` so that progress, per-trial lines and results appear, in a terminal or a log file.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "steerlight-console"


def show_logs(level: int = logging.INFO) -> None:
    """Print steerlight's records at `level` and above on stdout, once per process."""
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

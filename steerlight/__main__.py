"""`python -m steerlight fit|validate|test|predict|search|tiny|export ...`: one entry for every job.

fit / validate / test / predict are the LightningCLI's; the others have their own parsers.
"""

import importlib
import sys

from steerlight.errors import exit_on_error

COMMANDS = {
    "search": "steerlight.search.command",
    "tiny": "steerlight.tiny.__main__",
    "export": "steerlight.export.command",
}


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in COMMANDS:
        sys.argv = [f"{sys.argv[0]} {command}", *sys.argv[2:]]
        return importlib.import_module(COMMANDS[command]).main()
    from steerlight.cli import cli_main
    from steerlight.console import show_logs

    show_logs()
    exit_on_error("steerlight", cli_main)


if __name__ == "__main__":
    main()

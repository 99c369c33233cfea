"""`python -m steerlight fit|validate|test|predict|search|tiny|export ...`: one entry for every
job."""

import sys

from steerlight.errors import exit_on_error


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in ("search", "tiny", "export"):
        sys.argv = [f"{sys.argv[0]} {command}", *sys.argv[2:]]
        if command == "export":
            from steerlight.export.command import main as export_main

            return export_main()
        if command == "search":
            from steerlight.search.command import main as search_main

            return search_main()
        from steerlight.tiny.__main__ import main as tiny_main

        return tiny_main()
    from steerlight.cli import cli_main
    from steerlight.console import show_logs

    show_logs()
    exit_on_error("steerlight", cli_main)


if __name__ == "__main__":
    main()

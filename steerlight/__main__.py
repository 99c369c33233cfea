"""`python -m steerlight fit|validate|test|predict --config FILE`."""

from steerlight.errors import exit_on_error


def main() -> None:
    from steerlight.cli import cli_main

    exit_on_error("steerlight", cli_main)


if __name__ == "__main__":
    main()

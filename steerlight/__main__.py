"""`python -m steerlight fit|validate|test|predict --config FILE`."""

from steerlight.cli import cli_main


def main() -> None:
    cli_main()


if __name__ == "__main__":
    main()

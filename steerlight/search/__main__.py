"""`python -m steerlight.search`: see `python -m steerlight.search --help`."""

from steerlight.search.command import main

if __name__ == "__main__":
    main()

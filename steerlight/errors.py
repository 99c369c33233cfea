"""The one exception type for bad user input."""


class SteerlightError(ValueError):
    """Bad input from the user (a file, a config value, a flag); the CLI prints only its message."""

"""What every command line shares below its parser: `--config` read by steerlight, dash aliases
of steerlight's own flags, and jsonargparse's errors as one line in steerlight's words."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from jsonargparse import ActionConfigFile, ArgumentParser

from steerlight.errors import SteerlightError, one_line
from steerlight.io import read_config


class ConfigFile(ActionConfigFile):
    """`--config FILE`, read by steerlight first: a missing file, a folder, YAML that does not
    parse or is not a mapping is one line naming the file (jsonargparse's names neither).
    Inside `flags_only` the files are passed over: a parse then applies the flags alone."""

    _passed_over = False

    def __call__(self, parser, cfg, values, option_string=None):
        if ConfigFile._passed_over:
            return
        read_config(values)
        super().__call__(parser, cfg, values, option_string)

    @staticmethod
    @contextmanager
    def flags_only() -> Iterator[None]:
        """Parses inside the block apply a command line's flags, not its config files (how a
        checkpoint's saved arguments rank above the config files and below the flags)."""
        ConfigFile._passed_over = True
        try:
            yield
        finally:
            ConfigFile._passed_over = False


@contextmanager
def one_line_errors(parser: ArgumentParser) -> Iterator[None]:
    """jsonargparse's error (a bad key or value) as one `SteerlightError` line (`explain`)."""
    from jsonargparse import ArgumentError

    try:
        yield
    except ArgumentError as err:
        raise SteerlightError(explain(str(err), parser)) from None


def dash_aliases(parser: ArgumentParser, names: Iterable[str]) -> None:
    """`--n-trials` beside `--n_trials` for the flags `names`: argparse's own aliases (a second
    option string of the same action), which `add_class_arguments` does not add itself."""
    for action in parser._actions:
        alias = "--" + action.dest.replace("_", "-")
        if action.dest in names and alias not in action.option_strings:
            action.option_strings.append(alias)
            parser._option_string_actions[alias] = action


def explain(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's error as one line that says what would be valid."""
    import difflib
    import re

    text = one_line(message)
    text = re.sub(
        r"Expected a typing\.Literal\[(.*?)\]\. Got value: (\S+)",
        r"got \2; choose one of \1",
        text,
    )
    text = re.sub(
        r"Expected a <class '(\w+)'>\. Got value: (\S+)",
        lambda m: (
            f"got {m[2]}; expected "
            + ("a finite number" if m[2].lower().lstrip("+-") in ("nan", "inf") else f"a {m[1]}")
        ),
        text,
    )
    text = re.sub(r'Parser key "([\w.]+)":', r"\1:", text)
    unknown = re.search(r"(?:does not accept option|unrecognized arguments:) '?-*([\w.]+)", text)
    if unknown:
        keys = _parser_keys(parser)
        close = difflib.get_close_matches(unknown.group(1), keys, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(k) for k in close)}? " if close else ""
        text += f"; {hint}(`--help` lists every key)"
    return text


def _parser_keys(parser) -> list[str]:
    """Every option key of the parser and its subcommands (`model.alpha`, `trainer.devices`)."""
    keys = []
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            for sub in action.choices.values():
                keys += _parser_keys(sub)
        elif action.dest and action.dest != "help":
            keys.append(action.dest)
    return sorted(set(keys))

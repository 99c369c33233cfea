"""The search's command line: `steerlight fit`'s parser plus the search options.

`python -m steerlight.search` and `python -m steerlight search` take the same `--config`, the same
dotted overrides (`--model.*`, `--data.*`, `--trainer.*`) and `--print_config` as `fit`, and
the `SearchOptions` flags (`--n_trials`, or `--n-trials`: steerlight's own flags take a dash too).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from steerlight.arguments import dash_aliases
from steerlight.cli import SteerlightCLI, add_location_arguments, cli_main, link_run_arguments
from steerlight.errors import SteerlightError
from steerlight.io import read_config
from steerlight.search.objective import merge
from steerlight.search.space import Space, nest
from steerlight.search.study import DEFAULT_CONFIG, SEARCH_ONLY, SearchOptions, run_search

DESCRIPTION = (
    "steerlight search: Optuna (TPE + pruning) picks the steering configuration (method, layer, "
    "strength, ...) by exact-match accuracy on the val split. Each trial is a `steerlight fit` "
    "of the same config; the space is the config's `search:` section. Several workers "
    "(processes, machines) share one study through --storage. Then: "
    "`python -m steerlight test --ckpt best --study-name NAME`."
)


class SearchCLI(SteerlightCLI):
    """The run config and the search options, parsed and checked; nothing is instantiated
    (each trial builds its own model, data module and Trainer)."""

    def add_arguments_to_parser(self, parser) -> None:
        link_run_arguments(parser)
        add_location_arguments(parser)
        parser.add_argument(
            "--search",
            type=dict | None,
            default=None,
            help="The search space: `name: [choices]`, `name: {low, high[, log, step]}`, "
            "`layer: {probe_top_k: N}`, a fixed value, and `when: {method: {...}}`.",
        )
        # the options' help is their attribute docstrings; --study_name and --root are shared
        parser.add_class_arguments(SearchOptions, nested_key=None, skip={"study_name", "root"})
        dash_aliases(parser, {f.name for f in dataclasses.fields(SearchOptions)})

    def instantiate_classes(self) -> None:
        pass


def _parse(args: list[str] | dict) -> SearchCLI:
    return cli_main(
        args=args,
        run=False,
        cli_class=SearchCLI,
        parser_kwargs={"prog": "python -m steerlight.search", "description": DESCRIPTION},
    )


def _split(cli: SearchCLI, config_name: str) -> tuple[dict, Space, SearchOptions, str]:
    """The parsed command as (run config, space, options, study name)."""
    parsed = yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))
    options = SearchOptions(**{f.name: parsed.get(f.name) for f in _option_fields(parsed)})
    if options.space is not None:
        spec, origin = read_config(options.space), options.space
    else:
        spec, origin = parsed.get("search"), f"{config_name} (search:)"
    if spec is None:
        raise SteerlightError(
            f"{config_name} has no `search:` section; add one or pass --space FILE"
        )
    space = Space.from_dict(spec, origin)
    run = {k: v for k, v in parsed.items() if k not in SEARCH_ONLY}
    _check_space_values(cli, run, space, origin)
    name = options.study_name or Path(config_name).stem
    return run, space, options, name


def _check_space_values(cli: SearchCLI, run: dict, space: Space, origin: str) -> None:
    """Every value the space can give a trial is valid for `fit`, checked before the first
    trial: a fixed value or choice the model does not take is one line now, not a FAIL later."""
    from jsonargparse import ArgumentError

    from steerlight.arguments import explain
    from steerlight.module import SETTINGS_GROUPS

    for name, value in space.values():
        where = f"{origin}: {name}={value!r}"
        try:
            cli.parser.parse_object(merge(run, {"model": nest({name: value})}))
        except ArgumentError as err:
            raise SteerlightError(f"{where}: {explain(str(err), cli.parser)}") from None
        group, _, field = name.partition(".")
        if group == "options":  # a method's own settings, checked by the methods that read them
            from steerlight.steering.method import get, option_fields

            for method in sorted(option_fields().get(field, ())):
                try:
                    get(method).options({field: value})
                except SteerlightError as err:
                    raise SteerlightError(f"{where}: {err}") from None
        if field and group in SETTINGS_GROUPS:
            settings = {**(run.get("model", {}).get(group) or {}), field: value}
            try:
                SETTINGS_GROUPS[group](**settings)
            except (TypeError, ValueError) as err:
                raise SteerlightError(f"{where}: {err}") from None


def _option_fields(parsed: Mapping[str, Any]):
    return [f for f in dataclasses.fields(SearchOptions) if f.name in parsed]


def parse_search(
    config: str | Path | Mapping[str, Any], args: Mapping[str, Any]
) -> tuple[dict, Space, SearchOptions, str]:
    """The Python API's input: a config file or mapping, plus nested overrides and options."""
    if isinstance(config, Mapping):
        base, config_name = dict(config), "search"
    else:
        base, config_name = read_config(config), str(config)
    return _split(_parse(merge(base, args)), config_name)


def parse_argv(argv: list[str]) -> tuple[dict, Space, SearchOptions, str]:
    """The command line's input; without --config, configs/debug.yaml (the embedded default).

    (jsonargparse's `default_config_files` would load the default beneath a --config given,
    whose run would then inherit the default's search space: so the default is added here,
    where no option is -c / --config.)
    """
    if not {"-c", "--config", "-h", "--help"} & {a.split("=")[0] for a in argv}:
        if not Path(DEFAULT_CONFIG).is_file():
            raise SteerlightError(
                f"no --config given and {DEFAULT_CONFIG} is not here: pass --config FILE"
            )
        argv = ["--config", DEFAULT_CONFIG, *argv]
    cli = _parse(argv)
    files = cli.config.get("config") or []
    return _split(cli, str(files[-1].relative) if files else "search")


def search(
    config: str | Path | Mapping[str, Any] = DEFAULT_CONFIG,
    *,
    overrides: Mapping[str, Any] | None = None,
    **options: Any,
):
    """Run a search and return its `optuna.Study`; the study folder is `<root>/<study name>`.

    `config` is a run config file (with a `search:` section) or the same as a mapping;
    `overrides` are dotted keys as on the command line (``{"data.limit_val": 40}``); `options`
    are `SearchOptions` fields (``n_trials=20``, ``study_name="caa"``, ``root=...``).
    """
    from steerlight.console import lightning_banners_once

    args = nest(overrides or {})
    args.update(options)
    with lightning_banners_once():  # parsing and every trial's Trainer print them
        return run_search(*parse_search(config, args))


def run(argv: list[str]):
    """A command line's search, start to end; returns the `optuna.Study`."""
    from steerlight.console import lightning_banners_once

    with lightning_banners_once():
        return run_search(*parse_argv(argv))


def main(argv: list[str] | None = None) -> None:
    """`python -m steerlight.search`: errors in one line (`--verbose` for the traceback)."""
    from steerlight.console import show_logs
    from steerlight.errors import exit_on_error

    show_logs()

    def start() -> None:  # after exit_on_error took `--verbose` out of sys.argv
        run(sys.argv[1:] if argv is None else [a for a in argv if a != "--verbose"])

    exit_on_error("steerlight.search", start)

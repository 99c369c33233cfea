"""The LightningCLI that runs steerlight: `python -m steerlight fit|validate|test|predict`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from steerlight import layout
from steerlight.arguments import ConfigFile, explain, one_line_errors
from steerlight.checkpoint import SteeringCheckpoint, check_checkpoint
from steerlight.console import lightning_notice
from steerlight.data.datamodule import GSM8KDataModule
from steerlight.errors import SteerlightError, one_line
from steerlight.io import ensure_writable_dir, read_config
from steerlight.layout import resolve_checkpoint
from steerlight.model.loading import model_source
from steerlight.module import SETTINGS_GROUPS, SteeredLM

# Lightning's advice for training loops that does not apply to a frozen, closed-form model.
_EXPECTED_WARNINGS = (
    r"`LightningModule.configure_optimizers` returned `None`",
    r"Found \d+ module\(s\) in eval mode",
    r"The number of training batches .* is smaller than the logging interval",
    r"LightningCLI's args parameter is intended to run from within Python",
    r"The dirpath has changed from",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
    r".*isinstance\(treespec, LeafSpec\)",
)


def quiet_expected_warnings() -> None:
    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lightning_notice)


class SaveConfigOnStart(SaveConfigCallback):
    """Writes the run's config.yaml once the run has really started, not at setup.

    Lightning writes it before the model is loaded, so a run refused for a bad model path,
    layer or checkpoint would replace the config of an earlier run in the same folder - the
    one `--ckpt` reads to rebuild that run's checkpoint.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage = stage

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().setup(trainer, pl_module, self._stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.training and trainer.state.fn != "fit":
            self._save(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)


class SteerlightCLI(LightningCLI):
    """LightningCLI with the data module's tokenizer and preset tied to the model, and
    `--ckpt best|last|PATH` that rebuilds a run from its saved config and checkpoint."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, with `--config` read by `ConfigFile`."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        text = "Path to a configuration file in json or yaml format."
        parser.add_argument("-c", "--config", action=ConfigFile, help=text)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link_run_arguments(parser)
        describe_methods(parser)
        parser.add_argument(
            "--ckpt",
            default=None,
            help="best: the best checkpoint of the newest study under --root (or of "
            "--study-name); last: the newest checkpoint under --root; or a checkpoint path. "
            "The run's saved config is loaded first, so only flags you pass change it.",
        )
        add_location_arguments(parser)
        parser.add_argument(
            "--search",
            type=dict | None,
            default=None,
            help="The search space that `python -m steerlight.search` reads from the same "
            "config file; ignored by fit/validate/test/predict.",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's, less `predict` (a frozen model steered to answer has no `forward`)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in COMMANDS}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Lightning's subcommands with steerlight's help (Lightning's first docstring lines
        stop mid-sentence), and the commands `python -m steerlight` hands to other parsers."""
        from argparse import _SubParsersAction

        for name in self.subcommands():
            kwargs.setdefault(name, {}).setdefault("description", COMMANDS[name])
        super()._add_subcommands(parser, **kwargs)
        action = parser._subcommands_action
        for choice in action._choices_actions:
            choice.help = COMMANDS[choice.dest]
        for name in [n for n in COMMANDS if n not in self.subcommands()]:
            pseudo = _SubParsersAction._ChoicesPseudoAction(name, (), COMMANDS[name])
            action._choices_actions.append(pseudo)
        action.metavar = "{" + ",".join(COMMANDS) + "}"

    def after_fit(self) -> None:
        """The result as the run's last line, after Lightning's notices and bar."""
        from steerlight.progress import log_result

        log_result(self.trainer)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's parse (a bad key or value in one line), then the run `--ckpt` names
        (its saved config beneath the config files and flags given) and the checks a command
        needs before anything starts. The checkpoint's own model arguments are applied in
        `before_instantiate_classes`: Lightning's step between the two would apply them over
        the `--model.*` flags given, so it is handed no `ckpt_path`."""
        with one_line_errors(parser):
            super().parse_arguments(parser, args)
        self._args, self._checkpoint = args, None
        sub = self.config.get("subcommand")
        if sub is None:  # (`run=False`: a search's trial, parsed from a dict)
            return
        if self.config[sub].get("ckpt"):
            self._checkpoint = self._load_run(sub, self.config[sub].ckpt)
        elif sub != "fit":  # fit's ckpt_path resumes training, which steerlight never does
            self._checkpoint = self.config[sub].get("ckpt_path")
        if self._checkpoint:
            check_checkpoint(self._checkpoint)  # before Lightning's loader makes a traceback
            self.config[sub].ckpt_path = None
        if sub == "fit":  # checked now, not when the first checkpoint is due
            root = self.config[sub].trainer.get("default_root_dir") or os.getcwd()
            ensure_writable_dir(root, "trainer.default_root_dir")
        if sub == "test":  # the verdict table replaces Lightning's table of test metrics
            self.config[sub].verbose = False

    def _load_run(self, sub: str, spec: str) -> str:
        """`--ckpt best|last|PATH`: its checkpoint, and its run's saved config parsed beneath
        the config files and flags given (a logger's init_args too)."""
        from jsonargparse import Namespace

        if sub not in ("validate", "test"):
            raise SteerlightError("--ckpt is for validate, test and predict (after the command)")
        config = self.config[sub]
        ckpt, saved = resolve_checkpoint(spec, config.get("study_name"), Path(config.root))
        if saved:
            read_config(saved)  # a damaged best.yaml / config.yaml, named in one line
        if spec == "best" and sub == "test":  # not minutes on the baseline against itself
            layout.refuse_unsteered_best(ckpt)
        if saved:
            with one_line_errors(self.parser):
                base = self.parser.parse_args([sub, "--config", str(saved)])
                if isinstance(self._args, (dict, Namespace)):
                    self.config = self.parser.parse_object(self._args, base)
                else:
                    self.config = self.parser.parse_args(self._args, namespace=base)
        return str(ckpt)

    def before_instantiate_classes(self) -> None:
        """The checkpoint to validate or test, and the model arguments it saved: above the
        config files, below the flags (``test --ckpt best --model.alpha 3`` tests alpha 3).
        The flags are jsonargparse's: the command line parsed again over the saved arguments
        with its config files passed over."""
        import torch
        from jsonargparse import ArgumentError, Namespace

        path, sub = self._checkpoint, self.subcommand
        if not path:
            return
        self.config[sub].ckpt_path = path
        saved = torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters")
        kept = {k: v for k, v in (saved or {}).items() if k != "_instantiator"}
        if not kept:
            return
        try:
            config = self.parser.parse_object({sub: {"model": kept}}, self.config)
            if not isinstance(self._args, (dict, Namespace)):  # (a dict holds no flags)
                with ConfigFile.flags_only():
                    config = self.parser.parse_args(self._args, namespace=config)
        except ArgumentError as err:
            raise SteerlightError(
                f"checkpoint {path} holds model arguments this steerlight does not accept "
                f"({explain(str(err), self.parser)}); fit a new checkpoint"
            ) from None
        self.config[sub].model = config[sub].model

    def instantiate_classes(self) -> None:
        """Lightning's, with a bad value caught by a class (a settings group's check, the
        Trainer's accelerator) reported in one line instead of a traceback."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        config = self.config[self.subcommand] if self.subcommand else self.config
        for name, cls in SETTINGS_GROUPS.items():  # checked here to name the key in errors
            group = config.get("model", {}).get(name)
            if group is not None and not isinstance(group, cls):
                try:
                    cls(**(group.as_dict() if hasattr(group, "as_dict") else dict(group)))
                except (TypeError, ValueError) as err:
                    raise SteerlightError(f"model.{name}: {one_line(str(err))}") from None
        # The model source (a GGUF file converted once, an alias) is checked before the Trainer
        # starts: Lightning's setup makes the logger's run folder before any model loads.
        model_source(str(config.get("model", {}).get("model_name_or_path") or "tiny"))
        try:
            super().instantiate_classes()
        except SteerlightError:
            raise
        except MisconfigurationException as err:
            raise SteerlightError(f"trainer: {one_line(str(err))}") from None
        except (ValueError, TypeError) as err:
            raise SteerlightError(explain(str(err), self.parser)) from None
        for logger in self.trainer.loggers:  # each run writes its HPARAMS row itself, not
            if hasattr(logger, "_default_hp_metric"):  # Lightning's raw one with hp_metric -1
                logger._default_hp_metric = False


def describe_methods(parser: LightningArgumentParser) -> None:
    """`--model.method`'s help lists the registered steering methods (read when parsing)."""
    from steerlight.steering.method import describe, names

    for action in parser._actions:
        if action.dest == "model.method":
            action.help = describe()
            action.metavar = "{" + ",".join(names()) + "}"


def link_run_arguments(parser: LightningArgumentParser) -> None:
    """The data module's tokenizer and the model's preset follow the model and data settings."""
    parser.link_arguments("model.model_name_or_path", "data.tokenizer")
    parser.link_arguments("data.preset", "model.preset")
    parser.set_defaults(
        {
            "trainer.max_epochs": 1,
            "trainer.num_sanity_val_steps": 0,
            "trainer.enable_model_summary": False,
        }
    )


def add_location_arguments(parser: LightningArgumentParser) -> None:
    """--study_name, --root and --quiet, the same for every command (and `--verbose`, read
    before parsing, shows an error's traceback)."""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="Print the results and errors only: no progress lines, no Lightning notices. "
        "(--verbose shows an error's traceback instead of its one line.)",
    )
    parser.add_argument(
        "--study_name",
        "--study-name",
        default=None,
        help="The study: the search's study name (default: the config file's stem); "
        "`--ckpt best` reads this study's best checkpoint (default: the newest study).",
    )
    parser.add_argument(
        "--root",
        "--logs_root",  # its name before the search and test shared it
        "--logs-root",
        default="lightning_logs",
        help="The folder that holds the study folders (and where --ckpt looks for runs).",
    )


DESCRIPTION = (
    "steerlight: activation-steering search for Hugging Face causal LMs on GSM8K. "
    "`python -m steerlight COMMAND --help` documents each command."
)
COMMANDS = {
    "fit": "Fit steering vectors and probes on train, then score the configuration on val.",
    "validate": "Score a fitted configuration on val (--ckpt best|last|PATH).",
    "test": "The verdict: the chosen configuration beside the unsteered baseline on test, "
    "once (--ckpt best).",
    "search": "Optuna over method, layer and strength, scored on val (its own --help).",
    "export": "Write a checkpoint's steering as an lm-eval, steering-vectors or GGUF file.",
    "tiny": "Install the embedded offline model that steerlight ships (--force trains it).",
}
"""Every `python -m steerlight` command and its one line in `--help`."""


def cli_main(
    args: Any = None,
    run: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    checkpoint: bool = True,
    cli_class: type[SteerlightCLI] = SteerlightCLI,
    parser_kwargs: dict[str, Any] | None = None,
    progress: str | None = "",
    save_config: bool = True,
) -> SteerlightCLI:
    """Build (and with `run`, execute) the CLI; `args` is an argv list or a config dict.

    `progress` prefixes the progress lines of each pass (`None` turns them off); `save_config`
    False writes no config.yaml (with no logger, it would land in the working directory).
    """
    from jsonargparse import set_parsing_settings

    quiet_expected_warnings()
    # --help shows settings groups' attribute docstrings (GenerationSettings, DACSettings, ...)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    from steerlight.progress import PassProgress

    callbacks = [SteeringCheckpoint()] if checkpoint else []
    if progress is not None:  # the prefix of each progress line; None: no lines
        callbacks.append(PassProgress(prefix=progress))
    kwargs = {"prog": "python -m steerlight", "description": DESCRIPTION, **(parser_kwargs or {})}
    return cli_class(
        SteeredLM,
        GSM8KDataModule,
        seed_everything_default=0,
        trainer_defaults={"callbacks": [*callbacks, *extra_callbacks]},
        save_config_callback=SaveConfigOnStart if save_config else None,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # nothing is trained
        # bad input raises (and becomes one line) instead of printing the whole usage text
        parser_kwargs={"exit_on_error": False, **kwargs},
        args=args,
        run=run,
    )

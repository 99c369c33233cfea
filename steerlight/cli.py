"""The LightningCLI that runs steerlight: `python -m steerlight fit|validate|test|predict`."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from steerlight.checkpoint import SteeringCheckpoint
from steerlight.data.datamodule import GSM8KDataModule
from steerlight.errors import SteerlightError
from steerlight.module import SteeredLM

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
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


class SteerlightCLI(LightningCLI):
    """LightningCLI with the data module's tokenizer and preset tied to the model, and
    `--ckpt best|last|PATH` that rebuilds a run from its saved config and checkpoint."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("data.preset", "model.preset")
        parser.set_defaults(
            {
                "trainer.max_epochs": 1,
                "trainer.num_sanity_val_steps": 0,
                "trainer.enable_model_summary": False,
            }
        )
        parser.add_argument(
            "--ckpt",
            default=None,
            help="best: the best checkpoint of the latest search (or of --study_name); "
            "last: the newest checkpoint under --logs_root; or a checkpoint path. The run's "
            "saved config is loaded first, so only flags you pass change it.",
        )
        parser.add_argument("--study_name", default=None, help="The study `--ckpt best` reads.")
        parser.add_argument(
            "--search",
            type=dict | None,
            default=None,
            help="The search space that `python -m steerlight.search` reads from the same "
            "config file; ignored here.",
        )
        parser.add_argument(
            "--logs_root", default="lightning_logs", help="Where --ckpt looks for runs."
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        spec = sub and self.config[sub].get("ckpt")
        if not spec:
            return
        if sub == "fit":
            raise SteerlightError("--ckpt is for validate, test and predict")
        ckpt, config = resolve_checkpoint(
            spec, self.config[sub].get("study_name"), Path(self.config[sub].logs_root)
        )
        argv = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
        at = argv.index(sub) + 1
        saved = ["--config", str(config)] if config else []
        super().parse_arguments(parser, [*argv[:at], *saved, *argv[at:], "--ckpt_path", str(ckpt)])


def resolve_checkpoint(spec: str, study: str | None, root: Path) -> tuple[Path, Path | None]:
    """A checkpoint named by `best`, `last` or a path, and the config of the run that wrote it."""
    if spec == "best":
        pattern = f"{study}/best.ckpt" if study else "*/best.ckpt"
        found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            where = f"study {study!r}" if study else "any study"
            raise SteerlightError(
                f"--ckpt best: {where} under {root}/ has no best.ckpt; "
                "run `python -m steerlight.search` first, or pass a checkpoint path"
            )
        return found[-1], found[-1].with_name("best.yaml")
    if spec == "last":
        found = sorted(root.glob("**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SteerlightError(f"--ckpt last: no checkpoint under {root}/; run `fit` first")
        path = found[-1]
    else:
        path = Path(spec)
        if not path.is_file():
            raise SteerlightError(f"--ckpt {spec}: no such checkpoint file (or use best / last)")
    for config in (path.with_name("best.yaml"), path.parent.parent / "config.yaml"):
        if config.is_file():
            return path, config
    return path, None


def cli_main(
    args: Any = None,
    run: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    checkpoint: bool = True,
) -> SteerlightCLI:
    """Build (and with `run`, execute) the CLI; `args` is an argv list or a config dict."""
    quiet_expected_warnings()
    callbacks = [SteeringCheckpoint()] if checkpoint else []
    return SteerlightCLI(
        SteeredLM,
        GSM8KDataModule,
        seed_everything_default=0,
        trainer_defaults={"callbacks": [*callbacks, *extra_callbacks]},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # nothing is trained
        args=args,
        run=run,
    )

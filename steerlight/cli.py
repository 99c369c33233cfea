"""The LightningCLI that runs steerlight: `python -m steerlight fit|validate|test|predict`."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from steerlight.checkpoint import SteeringCheckpoint
from steerlight.data.datamodule import GSM8KDataModule
from steerlight.module import SteeredLM


class SteerlightCLI(LightningCLI):
    """LightningCLI with the data module's tokenizer and preset tied to the model."""

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


def cli_main(args: list[str] | None = None, run: bool = True) -> SteerlightCLI:
    return SteerlightCLI(
        SteeredLM,
        GSM8KDataModule,
        seed_everything_default=0,
        trainer_defaults={"callbacks": [SteeringCheckpoint()]},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )

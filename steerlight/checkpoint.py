"""ModelCheckpoint for a fit that takes no optimizer step."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class SteeringCheckpoint(ModelCheckpoint):
    """Saves the steering state although `global_step` stays 0.

    Steering vectors are closed-form, so `fit` never steps an optimizer and the stock callback,
    which skips saving when no step was taken since the last save, would never write a file.
    """

    def __init__(self, monitor: str | None = "val/acc", mode: str = "max", **kwargs) -> None:
        kwargs.setdefault("filename", "steering-epoch{epoch}")
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("save_last", True)
        super().__init__(monitor=monitor, mode=mode, **kwargs)

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
        )

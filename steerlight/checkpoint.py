"""ModelCheckpoint for a fit that takes no optimizer step, writing files atomically; and the
check that a checkpoint file is readable before Lightning trusts it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from steerlight.errors import SteerlightError
from steerlight.io import plain_file_mode


class SteeringCheckpoint(ModelCheckpoint):
    """Saves the steering state although `global_step` stays 0, atomically.

    Steering vectors are closed-form, so `fit` never steps an optimizer and the stock callback,
    which skips saving when no step was taken since the last save, would never write a file.
    Each file is written under a temporary name in its folder and renamed into place, so a
    killed run leaves either the previous checkpoint or the new one, never half of one.
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

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Lightning's own "atomic" save stages the file in the system temp folder and moves
        # it, which is a plain (interruptible) copy when that folder is another filesystem.
        # The temp name does not end in .ckpt, so `--ckpt last` never picks one up.
        tmp = None
        if trainer.is_global_zero:  # under DDP only rank 0 writes; every rank takes part
            Path(filepath).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=Path(filepath).parent, prefix=f".{Path(filepath).name}.", suffix=".tmp"
            )
            os.close(fd)
            os.chmod(tmp, plain_file_mode())  # not mkstemp's 0600: results are shared
        try:
            super()._save_checkpoint(trainer, tmp or filepath)
            if tmp is not None:
                os.replace(tmp, filepath)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        self._last_checkpoint_saved = filepath


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a steerlight checkpoint (tensors only, no pickle), or say in one line why not."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SteerlightError(f"checkpoint {path} does not exist (or use --ckpt best / last)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: never trusted
        reason = " ".join(str(err).split())[:200]
        raise SteerlightError(
            f"checkpoint {path} cannot be read, it is truncated or corrupt ({type(err).__name__}:"
            f" {reason}); re-create it with `fit` or the search, or pass another checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or "steering" not in checkpoint:
        raise SteerlightError(
            f"checkpoint {path} was not written by steerlight (no steering state): pass a "
            "checkpoint from `python -m steerlight fit` or the search"
        )
    return checkpoint


def base_model_identity(hparams: Mapping[str, Any], fingerprint: str) -> dict[str, Any]:
    """What a checkpoint records of its base model (never its weights)."""
    return {
        "name_or_path": hparams["model_name_or_path"],
        "revision": hparams["revision"],
        "weights_fingerprint": fingerprint,
    }


def check_base_model(checkpoint: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    """Refuse a checkpoint fitted on other weights than the loaded model's."""
    if "steering" not in checkpoint or "base_model" not in checkpoint:
        raise SteerlightError("this checkpoint was not written by steerlight (no steering state)")
    saved = checkpoint["base_model"]
    if saved["weights_fingerprint"] != identity["weights_fingerprint"]:
        raise SteerlightError(
            f"checkpoint was fitted on {saved['name_or_path']!r} (weights "
            f"{saved['weights_fingerprint']}), but the loaded model "
            f"{identity['name_or_path']!r} has weights {identity['weights_fingerprint']}: test "
            "it with the model it was fitted on, or fit a new checkpoint for this one"
        )

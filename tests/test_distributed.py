"""Validation and test under DDP (2 CPU processes, gloo) count every question exactly once."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from steerlight.data.datamodule import GSM8KDataModule
from steerlight.layout import latest_verdict
from steerlight.module import SteeredLM


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> Path:
    return tiny_llama_dir


class CloseProcessGroup(pl.Callback):
    """Ends gloo in each spawned worker before it exits: a worker that exits with gloo's threads
    still running can abort ("terminate called without an active exception")."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        if trainer.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def evaluate(model_dir: Path, tmp_path: Path, devices: int) -> dict[str, float]:
    dm = GSM8KDataModule(
        source="synthetic",
        tokenizer=str(model_dir),
        synthetic_train_size=60,
        synthetic_test_size=7,  # odd: a padding sampler would repeat a question
        val_size=5,
        n_shots=0,
        batch_size=2,
    )
    module = SteeredLM(
        model_name_or_path=str(model_dir), method="none", generation={"max_new_tokens": 4}
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[CloseProcessGroup()],
    )
    val = trainer.validate(module, dm)[0]
    test = trainer.test(module, dm)[0]
    return {**val, **test}


def test_ddp_counts_each_question_once(llama, tmp_path):
    single = evaluate(llama, tmp_path / "one", devices=1)
    double = evaluate(llama, tmp_path / "two", devices=2)
    assert single["val/questions"] == double["val/questions"] == 5
    assert single["test/questions"] == double["test/questions"] == 7
    for key in ("val/acc_strict", "val/acc_flexible", "test/acc_strict", "test/acc_flexible"):
        assert single[key] == double[key], key
    lines = (latest_verdict(tmp_path / "two") / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 7, "the verdict gathers every rank's questions, without repeats"

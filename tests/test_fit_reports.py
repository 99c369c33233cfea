"""What a fit reports: the layer `auto` chose (log, checkpoint, HPARAMS) and tokens per answer."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch

from steerlight.checkpoint import SteeringCheckpoint
from steerlight.data.datamodule import GSM8KDataModule
from steerlight.eval import figures
from steerlight.module import SteeredLM, _recorded


def test_fit_reports_the_auto_layer_and_tokens_per_answer(tiny_llama_dir, tmp_path, caplog):
    module = SteeredLM(
        model_name_or_path=str(tiny_llama_dir),
        layer="auto",
        alpha=2.0,
        generation={"max_new_tokens": 6},
        cache_dir=str(tmp_path / "cache"),
    )
    data = GSM8KDataModule(
        source="synthetic",
        tokenizer=str(tiny_llama_dir),
        synthetic_train_size=80,
        synthetic_test_size=4,
        val_size=8,
        n_shots=0,
        batch_size=4,
        limit_train=12,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SteeringCheckpoint()],
        logger=False,
    )
    with caplog.at_level(logging.INFO, logger="steerlight"):
        trainer.fit(module, data)
    best = int(module.steering["probe_auc"].argmax())
    assert f"layer auto: layer {best} " in caplog.text
    saved = torch.load(Path(trainer.checkpoint_callback.best_model_path), weights_only=True)
    assert saved["layer"] == best and saved["hyper_parameters"]["layer"] == "auto"
    columns = figures.hparams_columns(_recorded(module))  # TensorBoard's HPARAMS tab
    assert [v for k, v in columns.items() if "layer" in k] == [best]
    # only the steered val pass generated (no baseline without a search's memo): 8 answers
    metrics = trainer.callback_metrics
    assert metrics["val/questions"] == 8
    assert metrics["val/tokens_per_answer"] == module.generated_tokens / 8
    assert 0 < module.generated_tokens <= 8 * 6
    capped = module.metrics["val"].capped.compute()
    assert metrics["val/at_token_cap"] == capped / 8

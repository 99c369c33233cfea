"""Progress lines for every long pass of a run, in a terminal and in a log file alike.

Lightning's bar shows batches, which for a val pass of one or a few big generation batches means
a bar frozen for minutes, and nothing at all when output is not a terminal. `PassProgress`
logs a plain line (questions done, rate, generated tokens per second, running accuracy, ETA)
every 10% of a pass or 30 seconds, and one at its end, to the `steerlight.progress` logger.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback

from steerlight.console import Pace

log = logging.getLogger("steerlight.progress")


def _questions(dataloaders: Any) -> int:
    """Questions a pass will see: the datasets' lengths (0 where unknown)."""
    if dataloaders is None:
        return 0
    loaders = dataloaders if isinstance(dataloaders, (list, tuple)) else [dataloaders]
    return sum(len(getattr(dl, "dataset", None) or []) for dl in loaders)


class PassProgress(Callback):
    """Lines for the train pass (reading activations), each val round and the test pass.

    A val or test step holds many questions (minutes on a big model): the module reports rows
    as they finish (`on_rows_done`), which advance the count and its ETA within the step, and a
    forward pre-hook gives a line every `every_s` seconds while no row finishes.
    """

    def __init__(self, every_s: float = 30.0, fraction: float = 0.1, prefix: str = "") -> None:
        self.every_s, self.fraction, self.prefix = every_s, fraction, prefix
        self._pace: Pace | None = None
        self._tokens = 0
        self._counted = 0  # questions of the current step already counted
        self._hook = None
        self._module: pl.LightningModule | None = None

    def _watch_batch(self, pl_module: pl.LightningModule, stage: str, batch: Any) -> None:
        """Count the step's finished rows and its forwards while it generates."""
        model = getattr(pl_module, "model", None)
        self._unwatch()
        if self._pace is None or model is None or not pl_module.trainer.is_global_zero:
            return
        what, questions = _what(pl_module.trainer, stage), len(batch["ids"])
        # a steering test step generates every question twice: steered, then the baseline
        passes = 2 if stage == "test" and getattr(pl_module, "steers", False) else 1
        started, last, forwards, rows = time.monotonic(), [time.monotonic()], [0], [0]

        def rows_done(n: int) -> None:
            rows[0] += n
            last[0] = time.monotonic()
            # (the step's last question is counted at its end, with the accuracy scored)
            done = min(rows[0] // passes, questions - 1)
            self._advance(what, stage, pl_module, done - self._counted)

        def count(_module, _args) -> None:
            forwards[0] += 1
            now = time.monotonic()
            if now - last[0] >= self.every_s:
                last[0] = now
                log.info(
                    f"{self.prefix}{what}: {self._pace.done}/{self._pace.total} questions done; "
                    f"still decoding a step of {questions} questions: {forwards[0]} forward "
                    f"passes in {now - started:.0f}s"
                )

        self._hook = model.register_forward_pre_hook(count)
        self._module, pl_module.on_rows_done = pl_module, rows_done

    def _unwatch(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._module is not None:
            self._module.on_rows_done, self._module = None, None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback  # (Lightning's; a bar of ours would clash with
        if bar is not None:  # `enable_progress_bar: false`): no logger version `v_num` on it
            bar.get_metrics = partial(_without_version, type(bar).get_metrics, bar)

    # The clock starts at a pass's first batch, after the module's epoch-start work (fitting
    # the probes at the end of `fit`), which is not the pass's.
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        if batch_idx == 0:
            self._start(_questions(trainer.val_dataloaders), pl_module)
        self._watch_batch(pl_module, "val", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        if batch_idx == 0:
            self._start(_questions(trainer.test_dataloaders), pl_module)
        self._watch_batch(pl_module, "test", batch)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._unwatch()

    def _start(self, total: int, pl_module: pl.LightningModule) -> None:
        self._pace = Pace(total, self.every_s, self.fraction) if total else None
        self._tokens = getattr(pl_module, "generated_tokens", 0)

    def _advance(self, what: str, stage: str, pl_module: pl.LightningModule, n: int) -> None:
        """Count `n` more questions done; a line when one is due."""
        if n <= 0 or self._pace is None or not pl_module.trainer.is_global_zero:
            return
        self._counted += n
        if not self._pace.advance(n):
            return
        line = self._pace.line(f"{self.prefix}{what}", "questions")
        tokens = getattr(pl_module, "generated_tokens", 0) - self._tokens
        if tokens:
            line += f", {tokens / max(self._pace.elapsed, 1e-9):.0f} tokens/s"
        metrics = getattr(pl_module, "metrics", {})
        metric = metrics[stage] if stage and stage in metrics else None
        if metric is not None and int(metric.strict.total):  # this rank's counts: no sync
            line += f", acc {float(metric.strict.correct) / int(metric.strict.total):.3f}"
        log.info(line)

    def _report(self, stage: str, batch: Any, pl_module: pl.LightningModule) -> None:
        """A step is done: count its questions not counted yet."""
        self._unwatch()
        what = _what(pl_module.trainer, stage)
        self._advance(what, stage, pl_module, len(batch["ids"]) - self._counted)
        self._counted = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # after the module's epoch start, which knows what is cached
            fit = getattr(pl_module, "_fit", None)
            collecting = fit is not None and fit.collecting
            self._start(_questions(trainer.train_dataloader) if collecting else 0, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._report("train", batch, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._report("val", batch, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._report("test", batch, pl_module)


def _without_version(get_metrics, bar, trainer: pl.Trainer, pl_module: pl.LightningModule):
    return {k: v for k, v in get_metrics(bar, trainer, pl_module).items() if k != "v_num"}


def _what(trainer: pl.Trainer, stage: str) -> str:
    """A pass's name in its lines: `train activations`, `val round 2/4`, `val`, `test ...`."""
    if stage == "val":
        rounds = trainer.max_epochs or 1
        in_rounds = trainer.state.fn == "fit" and rounds > 1  # a search trial's pruning rounds
        return f"val round {trainer.current_epoch + 1}/{rounds}" if in_rounds else "val"
    return {"train": "train activations", "test": "test (steered and baseline)"}[stage]


def log_result(trainer: pl.Trainer) -> None:
    """`val/acc 0.450 (strict exact match, 120 val questions)`: the line a fit ends with."""
    metrics = trainer.callback_metrics
    if "val/acc" not in metrics or not trainer.is_global_zero:
        return
    n = f", {int(metrics['val/questions'])} val questions" if "val/questions" in metrics else ""
    acc = float(metrics["val/acc"])  # (a result: shown under --quiet, unlike progress lines)
    logging.getLogger("steerlight").info(f"val/acc {acc:.3f} (strict exact match{n})")


class StepProgress(Callback):
    """Lines for a training run measured in optimizer steps (the tiny model's build): steps
    done, rate, the logged loss and an ETA from the measured speed."""

    def __init__(self, what: str, every_s: float = 30.0, fraction: float = 0.1) -> None:
        self.what, self.every_s, self.fraction = what, every_s, fraction
        self._pace: Pace | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pace = Pace(trainer.max_steps, self.every_s, self.fraction)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pace is None or not self._pace.advance(1):
            return
        loss = trainer.callback_metrics.get("loss")
        suffix = f", loss {float(loss):.3f}" if loss is not None else ""
        log.info(self._pace.line(self.what, "steps") + suffix)

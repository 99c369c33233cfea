"""SteeredLM: a frozen causal LM, steering vectors fitted on train, scored on val and test."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from steerlight.checkpoint import base_model_identity, check_base_model
from steerlight.data.prompts import PresetName, get_preset
from steerlight.errors import SteerlightError
from steerlight.eval import figures
from steerlight.eval.metrics import Accuracy
from steerlight.eval.report import paired_records, verdict_root, write_verdict
from steerlight.io import steerlight_home
from steerlight.model.generation import Generation, GenerationSettings
from steerlight.model.layers import check_fits, resolve_layer
from steerlight.model.loading import (
    DType,
    load_model,
    load_tokenizer,
    weights_fingerprint,
)
from steerlight.model.refill import refill_generate
from steerlight.steering import method as methods
from steerlight.steering.activations import ActivationCache, ReadPosition
from steerlight.steering.apply import Method, SteeringConfig, steered_generate, steers
from steerlight.steering.caa import Normalization
from steerlight.steering.dac import DACGeneration, DACSettings
from steerlight.steering.fit import (
    Pairs,
    TrainFit,
    contrastive_texts,
    fit_keys,
    icl_vectors,
    solution_activations,
)
from steerlight.steering.hooks import Positions

log = logging.getLogger(__name__)

STAGES = ("val", "val_baseline", "test", "test_baseline")
SETTINGS_GROUPS = {"generation": GenerationSettings, "dac": DACSettings}
"""`SteeredLM` arguments that are dataclasses: `model.generation.*`, `model.dac.*`."""


class SteeredLM(pl.LightningModule):
    """A frozen causal LM with a steering vector added to its residual stream.

    `fit` makes one pass over train-split contrastive pairs, fits a CAA vector and a probe per
    layer, then validates; `validate` and `test` generate answers and score exact match.
    Checkpoints hold only the steering state and the model's identity, never its weights.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        revision: str | None = None,
        dtype: DType = "float32",
        trust_remote_code: bool = False,
        preset: PresetName = "gsm8k",
        method: Method = "caa",
        layer: int | list[int] | Literal["auto"] = "auto",
        alpha: float = 0.0,
        positions: Positions = "prompt_end+generated",
        normalization: Normalization = "mean_norm",
        pairs: Pairs = "corrupted",
        read_position: ReadPosition = "mean",
        generation: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
        dac: DACSettings = DACSettings(),  # noqa: B008 (frozen)
        options: dict[str, Any] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        log_samples: int = 8,
    ) -> None:
        """
        Args:
            model_name_or_path: Hugging Face model id or local folder; ``tiny`` is the embedded
                default that steerlight trains and caches itself.
            revision: Model revision (branch, tag or commit) for a Hub model.
            dtype: Weights dtype; ``bfloat16`` on a GPU, ``float32`` on a CPU.
            trust_remote_code: Allow model code from the Hub (off unless you trust the model).
            preset: Prompt preset (linked from ``data.preset``): sets stop strings and answer form.
            method: A registered steering method (``--help`` lists them; the README's table says
                how each steers): ``caa`` adds ``alpha * v`` after ``layer``; ``none`` is the
                unsteered model.
            layer: Decoder layer to steer (negative counts from the end), a list of layers (one
                vector each, one alpha; additive methods), or ``auto`` for the layer whose probe
                separates good from bad solutions best.
            alpha: CAA's steering strength; 0 reproduces the unsteered model exactly.
            positions: Token positions steered: ``generated``, ``prompt_end+generated`` or
                ``all`` non-pad tokens.
            normalization: ``none`` (raw mean difference), ``unit`` (unit norm) or ``mean_norm``
                (unit norm times the layer's mean activation norm; with ``read_position: mean``
                that norm is of mean-pooled activations, a third to a half of a per-token
                residual norm: scripts/paper_departures.py).
            pairs: ``corrupted``: gold solution vs. the same with consistently altered numbers;
                ``on_policy``: the model's own train generations, labelled by correctness.
            read_position: Where activations are read: ``mean`` over solution tokens (default)
                or ``last`` token (the CAA paper's; a different direction, cosine 0.2-0.35 on
                the embedded model).
            generation: How completions are decoded (greedy by default).
            dac: DAC's settings (used when ``method`` is ``dac``).
            options: The method's own settings, e.g. ``{center: pca_center}`` for ``pca``.
            seed: Seed for corrupted solutions and probe splits.
            cache_dir: Activation cache folder (default ``$STEERLIGHT_HOME/activations``).
            log_samples: Sample generations per stage written to TensorBoard.
        """
        super().__init__()
        generation = _group(GenerationSettings, generation, "generation")
        dac = _group(DACSettings, dac, "dac")
        if not math.isfinite(alpha):
            raise SteerlightError(f"alpha={alpha} is not a finite number: use e.g. 0 or 2.5")
        ints = layer if isinstance(layer, list) and layer else [layer]
        if layer != "auto" and not all(isinstance(i, int) for i in ints):
            raise SteerlightError(f"layer={layer!r} is invalid: use an integer, a list or 'auto'")
        self.options = methods.check_options(method, options)
        self.save_hyperparameters(ignore=["generation", "dac"])
        # plain dicts (`weights_only=True` loads refuse dataclasses), also in hparams.yaml
        groups = {"generation": dataclasses.asdict(generation), "dac": dataclasses.asdict(dac)}
        self.save_hyperparameters({**self.hparams, **groups})
        self.preset, self.settings, self.dac = get_preset(preset), generation, dac
        # checked now: a bad $STEERLIGHT_HOME is an error before any run folder is written
        self.cache_dir = Path(cache_dir) if cache_dir else steerlight_home() / "activations"
        self.metrics = torch.nn.ModuleDict({s: Accuracy(generation.max_new_tokens) for s in STAGES})
        self.model: torch.nn.Module | None = None
        self.tokenizer, self.fingerprint = None, ""  # set by configure_model
        self.steering: dict[str, Tensor] = {}  # what a checkpoint holds: fit or load fills it
        self._fit: TrainFit | None = None
        self.samples: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        self.records: list[dict[str, Any]] = []  # per-question test outcomes, both models
        self.val_baseline = False  # also score the unsteered model on val (a search's memo)
        self.generated_tokens = 0
        self.on_rows_done: Callable[[int], None] | None = None  # set by a progress callback
        self.log_probe_figure = True  # a search turns it off for its trials
        self._dac_alphas: list[Tensor] = []  # DAC's alpha_t per row and step, this epoch
        self.strict_loading = False  # checkpoints leave out the frozen base weights
        self.automatic_optimization = False

    # -- the model and its steering -----------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is None:
            hp = self.hparams  # a name (`tiny`, an alias) resolves where the model loads
            name, revision, trust = hp.model_name_or_path, hp.revision, hp.trust_remote_code
            self.model = load_model(name, revision, hp.dtype, trust)
            self.tokenizer = load_tokenizer(name, revision, trust)
            self.fingerprint = weights_fingerprint(self.model)
            check_fits(self.model, name, hp.layer, self.settings.max_new_tokens)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and getattr(dm, "batch_size", 0) is None:  # data.batch_size: auto
            self.model.to(self.trainer.strategy.root_device)  # measured where it will run
            dm.measure_batch_size(self.model, self.fingerprint, self.settings.max_new_tokens)

    def configure_optimizers(self) -> None:
        return None  # nothing is trained: the base model is frozen, vectors are closed-form

    @property
    def layer(self) -> int:
        """The steered layer: fixed by the config, or chosen by the probes for `auto`."""
        if isinstance(self.hparams.layer, list):
            return tuple(resolve_layer(self.model, i) for i in self.hparams.layer)
        if self.hparams.layer != "auto":
            return resolve_layer(self.model, self.hparams.layer)
        if "probe_auc" not in self.steering:
            raise SteerlightError("layer 'auto' needs probes: run fit first or load a checkpoint")
        return int(self.steering["probe_auc"].argmax())

    @property
    def steers(self) -> bool:
        """Whether generation differs from the unsteered model at all."""
        return steers(self.hparams.method, self.hparams.alpha, self.dac)

    def steering_config(self) -> SteeringConfig:
        hp = self.hparams
        unfitted = hp.layer == "auto" and "probe_auc" not in self.steering and not self.steers
        layer = None if unfitted else self.layer  # an unsteered test needs no probes
        args = (hp.method, layer, hp.alpha, hp.positions, hp.normalization, self.dac)
        return SteeringConfig(*args, self.options)

    def steering_vector(self, name: str = "vectors") -> Tensor:
        """The fitted vector (or DAC's per-step `icl_vectors`) at the steered layer, scaled."""
        return methods.scaled(self.steering, name, self.steering_config())

    # -- fit: one pass over train contrastive data ---------------------------------------------

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        key, state_key = fit_keys(
            hp, self.fingerprint, self.trainer.datamodule, self.trainer, self.settings, self.dac
        )
        if self._fit is None or self._fit.key != key:  # later epochs of a fit: state known
            cache = ActivationCache(self.cache_dir)
            self._fit = TrainFit(cache, key, state_key)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._fit.collecting:
            return  # (ending the epoch early with -1 would also skip validation)
        hp = self.hparams
        texts, labels, lens = contrastive_texts(
            batch, self.preset, hp.pairs, hp.seed, lambda: self.generate_batch(batch, False).texts
        )
        chat = self.preset.name == "chat"  # a chat template brings its own special tokens
        args = (self.model, self.tokenizer, texts, lens, hp.read_position, not chat)
        self._fit.add(solution_activations(*args, self._fit.prefixes), labels)

    def on_train_epoch_end(self) -> None:
        self._finish_fit()

    def _finish_fit(self) -> None:
        """Turn the collected (or cached) activations into vectors and probes, once per fit."""
        if self.trainer.state.fn != "fit" or self._fit is None:
            return
        if self.steering and self.steering is self._fit.state:
            return
        icl = (self.model, self.tokenizer, self.preset, self.trainer.datamodule, self.dac)
        extra = partial(icl_vectors, *icl) if self._fit.state_key["icl"] else None
        hp, ranks = self.hparams, partial(_all_ranks, self.trainer)
        state = self._fit.finish(hp.pairs, hp.seed, ranks, self.trainer.is_global_zero, extra=extra)
        self.steering, auc = state, state["probe_auc"].tolist()
        for i, value in enumerate(auc):
            self.log(f"probe_auc/layer_{i:02d}", value)
        writer = _tensorboard(self)
        if writer is not None and self.log_probe_figure:  # a search draws it once per study
            writer.add_figure("probes/auc_per_layer", figures.auc_figure(auc))

    # -- generation ---------------------------------------------------------------------------

    def generate_batch(self, batch: dict[str, Any], steered: bool = True):
        """Generate completions for a batch, steered as configured (or not at all); a search
        makes the unsteered ones once per study (`steerlight.search.memo`)."""
        args = (self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"])
        slots, on_finish = batch.get("slots"), self.on_rows_done  # (a val/test step: many)
        stop = self.preset.stop
        if steered and self.steers:
            config = self.steering_config()
            gen = steered_generate(
                *args, config, None, self.settings, stop, None, slots, on_finish, self.steering
            )
            if isinstance(gen, DACGeneration):
                self._dac_alphas.append(gen.alphas)
        else:
            gen = refill_generate(*args, self.settings, stop, slots, None, on_finish)
        self.generated_tokens += int((gen.tokens != self.tokenizer.pad_token_id).sum())
        return gen

    # -- validation and test -------------------------------------------------------------------

    # Accuracy accumulates over a whole run: in a `fit` with several epochs, each epoch
    # validates one shard of val, so `val/acc` after epoch r is the accuracy on r+1 shards -
    # the intermediate value the search's pruner sees.
    def on_fit_start(self) -> None:
        for stage in ("val", "val_baseline"):
            self.metrics[stage].reset()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self.on_fit_start()

    def on_test_start(self) -> None:
        self.metrics["test"].reset()
        self.metrics["test_baseline"].reset()

    def on_validation_epoch_start(self) -> None:
        self._finish_fit()  # in `fit`, Lightning validates before on_train_epoch_end
        self.samples["val"] = []

    def on_test_epoch_start(self) -> None:
        self.samples["test"], self.records = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = self.generate_batch(batch)
        self._score(batch, gen, "val")
        if not self.steers or self.val_baseline:  # free: the same, or a search's memo
            base = self.generate_batch(batch, steered=False) if self.steers else gen
            self._score(batch, base, "val_baseline")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The steered model and the unsteered baseline on the same questions (paired)."""
        steered = self.generate_batch(batch)
        baseline = self.generate_batch(batch, steered=False) if self.steers else steered
        self._score(batch, steered, "test")
        self._score(batch, baseline, "test_baseline")
        pad, cap = self.tokenizer.pad_token_id, self.metrics["test"].cap
        models = {"baseline": baseline, "steered": steered}
        self.records += paired_records(batch, models, self.preset.answer_form, pad, cap)

    def _score(self, batch: dict[str, Any], gen: Generation, stage: str) -> None:
        form, texts, pad = self.preset.answer_form, gen.texts, self.tokenizer.pad_token_id
        self.metrics[stage].update(texts, batch["golds"], form, gen.lengths(pad))
        if stage in self.samples:  # a few generations for TensorBoard's TEXT tab
            room = self.hparams.log_samples - len(self.samples[stage])
            rows = figures.sample_rows(batch["questions"], texts, batch["golds"], form, room)
            self.samples[stage] += rows

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
        for mode, value in self.metrics["test_baseline"].compute().items():
            self.log(f"test/baseline_acc_{mode}", value)
        self.records = [r for part in _all_ranks(self.trainer, self.records) for r in part]
        out = verdict_root(self.trainer)  # on every rank: trainer.log_dir is a DDP collective
        if self.trainer.is_global_zero:
            identity = base_model_identity(self.hparams, self.fingerprint)
            args = (self.records, self.steering_config(), self.hparams, identity, self.trainer)
            self.verdict_dir = write_verdict(out, *args)

    def _epoch_end(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.log_dict({f"{stage}/{k}": v for k, v in self.metrics[stage].scalars().items()})
        # `<stage>/acc` is what checkpoints and the search monitor: strict match.
        self.log(f"{stage}/acc", values["strict"])  # `fit` ends with it (cli.after_fit)
        total = self.metrics[stage].strict.total.float()  # this rank's count
        self.log(f"{stage}/questions", total, sync_dist=True, reduce_fx="sum")
        if stage == "val" and int(self.metrics["val_baseline"].strict.total):  # the 1st card
            self.log("acc/val_steered", values["strict"])
            self.log("acc/val_baseline", self.metrics["val_baseline"].compute()["strict"])
        if self.trainer.state.fn == "fit":  # (validate/test: no rounds, no `step` in the table)
            # the x-axis of these scalars: the round (a search trial's val shard), not the
            # optimizer step, which stays 0 for closed-form vectors
            self.log("step", float(self.current_epoch))
        writer = _tensorboard(self)
        if writer is not None:
            figures.log_stage(
                writer, stage, self.samples[stage], self._dac_alphas, self.current_epoch
            )
            figures.log_hparams(writer, figures.hparams_columns(_recorded(self)))
        self._dac_alphas = []

    # -- checkpoints: steering state and model identity, never the base weights ---------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}
        checkpoint["steering"] = {k: v.cpu() for k, v in self.steering.items()}
        checkpoint["base_model"] = base_model_identity(self.hparams, self.fingerprint)
        checkpoint["layer"] = chosen_layer(self)  # `auto` resolved

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        check_base_model(checkpoint, base_model_identity(self.hparams, self.fingerprint))
        self.steering = dict(checkpoint["steering"])


def _group(cls: type, value: Any, name: str) -> Any:
    """A settings group from its dataclass or a dict (as a checkpoint stores it), checked."""
    try:
        return value if isinstance(value, cls) else cls(**dict(value))
    except (TypeError, ValueError) as err:
        raise SteerlightError(f"model.{name}: {err}") from None


def _all_ranks(trainer: pl.Trainer, items: list) -> list[list]:
    """Every process's list (one per rank), e.g. under DDP; just [items] on one device."""
    if trainer.world_size == 1:
        return [items]
    import torch.distributed as dist

    parts: list = [None] * trainer.world_size
    dist.all_gather_object(parts, items)
    return parts


def _tensorboard(module: pl.LightningModule):
    """The TensorBoard writer on the main process, or None with another (or no) logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if isinstance(module.logger, TensorBoardLogger) and module.trainer.is_global_zero:
        return module.logger.experiment
    return None


def chosen_layer(lm: SteeredLM) -> int | list[int] | str:
    """The steered layer, or ``auto`` until probes choose it: what checkpoints record."""
    if lm.hparams.layer == "auto" and "probe_auc" not in lm.steering:
        return "auto"
    return list(lm.layer) if isinstance(lm.layer, tuple) else lm.layer


def _recorded(lm: SteeredLM) -> dict[str, Any]:
    """The hyperparameters with `auto` resolved (TensorBoard's HPARAMS tab)."""
    return {**lm.hparams, "layer": chosen_layer(lm)}

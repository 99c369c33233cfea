"""SteeredLM: a frozen causal LM, steering vectors fitted on train, scored on val and test."""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from steerlight.activations import ActivationCache, ReadPosition, read_activations, read_mask_for
from steerlight.answers import extract, is_correct
from steerlight.data.prompts import PresetName, get_preset
from steerlight.errors import SteerlightError
from steerlight.io import steerlight_home
from steerlight.metrics import ExactMatch
from steerlight.model.generation import GenerationSettings, generate
from steerlight.model.hooks import Positions, steer
from steerlight.model.layers import resolve_layer
from steerlight.model.loading import DType, load_model, load_tokenizer, weights_fingerprint
from steerlight.steering.caa import Normalization, corrupt_solution, mean_difference, scale_vectors
from steerlight.steering.dac import dac_generate, icl_step_vectors
from steerlight.steering.probes import fit_probes

log = logging.getLogger(__name__)

Method = Literal["none", "caa", "dac"]
DACVectors = Literal["caa", "icl"]
Pairs = Literal["corrupted", "on_policy"]
STAGES = ("val", "test")


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
        layer: int | Literal["auto"] = "auto",
        alpha: float = 0.0,
        positions: Positions = "prompt_end+generated",
        normalization: Normalization = "mean_norm",
        pairs: Pairs = "corrupted",
        read_position: ReadPosition = "mean",
        dac_top_p: float = 0.9,
        dac_alpha_max: float = 2.0,
        dac_batchmean: bool = False,
        dac_vectors: DACVectors = "caa",
        dac_steps: int = 8,
        dac_icl_examples: int = 64,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
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
            method: ``caa`` adds ``alpha * v`` after ``layer``; ``dac`` chooses the strength per
                token and row (Dynamic Activation Composition); ``none`` is the unsteered model.
            layer: Decoder layer to steer (negative counts from the end), or ``auto`` for the
                layer whose probe separates good from bad solutions best.
            alpha: Steering strength; 0 reproduces the unsteered model exactly.
            positions: Token positions steered: ``generated``, ``prompt_end+generated`` or
                ``all`` non-pad tokens.
            normalization: ``none`` (raw mean difference), ``unit`` (unit norm) or ``mean_norm``
                (unit norm times the layer's mean activation norm).
            pairs: ``corrupted``: gold solution vs. the same with consistently altered numbers;
                ``on_policy``: the model's own train generations, labelled by correctness.
            read_position: Where activations are read: ``mean`` over solution tokens or ``last``.
            dac_top_p: DAC: nucleus mass of the token sets whose KL sets the strength.
            dac_alpha_max: DAC: the largest strength (the probe strength); 0 is unsteered.
            dac_batchmean: DAC: divide the KL by the nucleus size, as the reference code does.
            dac_vectors: DAC: ``caa`` uses the CAA vector; ``icl`` uses DAC's own per-step
                vectors, in-context prompt minus zero-shot prompt (needs ``data.n_shots`` > 0).
            dac_steps: DAC with ``icl`` vectors: one vector for each of the first N generated
                tokens, then their mean over the rest.
            dac_icl_examples: DAC with ``icl`` vectors: train examples they are averaged over.
            max_new_tokens: Generation length limit.
            do_sample: Sample instead of greedy decoding (greedy is deterministic).
            temperature: Sampling temperature.
            top_p: Nucleus sampling threshold.
            seed: Seed for corrupted solutions, probe splits and sampling.
            cache_dir: Activation cache folder (default ``$STEERLIGHT_HOME/activations``).
            log_samples: Sample generations per stage written to TensorBoard.
        """
        super().__init__()
        for name, value in (("alpha", alpha), ("dac_alpha_max", dac_alpha_max)):
            if not math.isfinite(value):
                raise SteerlightError(
                    f"{name}={value} is not a finite number: use a real number such as 0 or 2.5"
                )
        if not 0 < dac_top_p <= 1:
            raise SteerlightError(f"dac_top_p={dac_top_p} is invalid: use a value in (0, 1]")
        if layer != "auto" and not isinstance(layer, int):
            raise SteerlightError(f"layer={layer!r} is invalid: use an integer or 'auto'")
        self.save_hyperparameters()
        self.preset = get_preset(preset)
        self.settings = GenerationSettings(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        self.metrics = torch.nn.ModuleDict(
            {
                f"{s}_{m}": ExactMatch()
                for s in (*STAGES, "test_baseline")
                for m in ("strict", "flexible")
            }
        )
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.fingerprint = ""
        # Steering state (what a checkpoint holds), filled by fit or a checkpoint.
        self.steering: dict[str, Tensor] = {}
        self._acts: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._cached: dict[str, Tensor] | None = None
        self._collect = False
        self._fitted_key: dict[str, Any] | None = None
        self.samples: dict[str, list[dict[str, Any]]] = {s: [] for s in STAGES}
        self.records: list[dict[str, Any]] = []  # per-question test outcomes, both models
        self.generation_memo: dict | None = None  # shared by a search's trials
        self.generated_tokens = 0
        self._dac_alphas: list[Tensor] = []  # DAC's alpha_t per row and step, this epoch
        self.strict_loading = False  # checkpoints leave out the frozen base weights
        self.automatic_optimization = False

    # -- model --------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_model(hp.model_name_or_path, hp.revision, hp.dtype, hp.trust_remote_code)
        self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.revision, hp.trust_remote_code)
        self.fingerprint = weights_fingerprint(self.model)
        if hp.layer != "auto":
            try:
                resolve_layer(self.model, hp.layer)
            except ValueError as err:
                raise SteerlightError(str(err)) from None

    def configure_optimizers(self) -> None:
        return None  # nothing is trained: the base model is frozen, vectors are closed-form

    @property
    def layer(self) -> int:
        """The steered layer: fixed by the config, or chosen by the probes for `auto`."""
        if self.hparams.layer != "auto":
            return resolve_layer(self.model, self.hparams.layer)
        if "probe_auc" not in self.steering:
            raise SteerlightError("layer 'auto' needs probes: run fit first or load a checkpoint")
        return int(self.steering["probe_auc"].argmax())

    @property
    def steers(self) -> bool:
        """Whether generation differs from the unsteered model at all."""
        hp = self.hparams
        strength = hp.dac_alpha_max if hp.method == "dac" else hp.alpha
        return hp.method != "none" and strength != 0

    def steering_vector(self) -> Tensor:
        if "vectors" not in self.steering:
            raise SteerlightError(
                "no steering vectors: run `fit` first, or `validate`/`test` with --ckpt_path"
            )
        layer = self.layer
        return scale_vectors(
            self.steering["vectors"][layer],
            self.hparams.normalization,
            self.steering["act_norm"][layer],
        )

    # -- fit: one pass over train contrastive data ---------------------------------------------

    def _cache_key(self) -> dict[str, Any]:
        hp, dm = self.hparams, self.trainer.datamodule
        key = {
            "model": hp.model_name_or_path,
            "revision": hp.revision,
            "weights": self.fingerprint,
            "dtype": hp.dtype,
            "data": getattr(dm, "fingerprints", {}).get("train"),
            "preset": hp.preset,
            "pairs": hp.pairs,
            "read_position": hp.read_position,
            "seed": hp.seed,
            "limit_train_batches": self.trainer.limit_train_batches,
            "world_size": self.trainer.world_size,
            "batch_size": getattr(dm, "hparams", {}).get("batch_size"),
        }
        if hp.pairs == "on_policy":
            key["generation"] = vars(self.settings)
        return key

    def _state_key(self, key: dict[str, Any]) -> dict[str, Any]:
        """The fitted steering state's cache key: the activations' key plus what else it uses."""
        hp = self.hparams
        icl = hp.method == "dac" and hp.dac_vectors == "icl"
        return {
            **key,
            "kind": "steering",
            "icl": [hp.dac_steps, hp.dac_icl_examples] if icl else None,
        }

    def _cache(self) -> ActivationCache:
        return ActivationCache(self.hparams.cache_dir or steerlight_home() / "activations")

    def on_train_epoch_start(self) -> None:
        """Decide what this epoch computes: nothing if the steering state is known already."""
        key = self._cache_key()
        if self._fitted_key == key:
            self._collect = False  # later epochs of a multi-round fit
            return
        cache = self._cache()
        state = cache.load(self._state_key(key))
        if state is not None:
            self._set_steering(state, key)
            self._collect = False
            return
        self._cached = cache.load(key)
        self._collect = self._cached is None
        self._acts, self._labels = [], []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._collect:
            return  # (ending the epoch early with -1 would also skip validation)
        texts, labels, prompt_lens = self._contrastive_texts(batch)
        chat = self.preset.name == "chat"
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=not chat)
        enc = enc.to(self.device)
        mask = enc["attention_mask"]
        start = mask.shape[1] - mask.sum(1) + torch.tensor(prompt_lens, device=self.device)
        start = start.clamp(max=mask.shape[1] - 1)
        read = read_mask_for(mask, start, self.hparams.read_position)
        self._acts.append(read_activations(self.model, enc["input_ids"], mask, read).cpu())
        self._labels.append(torch.tensor(labels))

    def _contrastive_texts(self, batch: dict[str, Any]) -> tuple[list[str], list[bool], list[int]]:
        """Prompt + solution texts with labels (True = good) and prompt lengths in tokens."""
        prompt_lens = batch["attention_mask"].sum(1).tolist()
        prompts, answers = batch["prompts"], batch["answers"]
        if self.hparams.pairs == "on_policy":
            gen = self.generate_batch(batch, steered=False)
            good = [
                self._correct(t, g, "strict")
                for t, g in zip(gen.texts, batch["golds"], strict=True)
            ]
            return [p + t for p, t in zip(prompts, gen.texts, strict=True)], good, prompt_lens
        texts, labels, lens = [], [], []
        for ex_id, prompt, answer, n in zip(
            batch["ids"], prompts, answers, prompt_lens, strict=True
        ):
            bad = corrupt_solution(answer, random.Random(f"{self.hparams.seed}:{ex_id}"))
            texts += [
                prompt + self.preset.continuation(answer),
                prompt + self.preset.continuation(bad),
            ]
            labels += [True, False]
            lens += [n, n]
        return texts, labels, lens

    def on_train_epoch_end(self) -> None:
        self._finish_fit()

    def _finish_fit(self) -> None:
        """Turn the collected (or cached) activations into vectors and probes, once per fit."""
        if self.trainer.state.fn != "fit":
            return
        key = self._cache_key()
        if self._fitted_key == key:
            return
        cache = self._cache()
        if self._cached is not None:
            acts, labels = self._cached["acts"], self._cached["labels"].bool()
        else:
            acts = torch.cat([a for part in self._gather(self._acts) for a in part])
            labels = torch.cat([y for part in self._gather(self._labels) for y in part])
            if self.trainer.is_global_zero:
                cache.save(key, {"acts": acts, "labels": labels.to(torch.uint8)})
        self._acts, self._labels, self._cached = [], [], None
        if labels.all() or not labels.any():
            raise SteerlightError(
                f"the {len(labels)} train examples are all {'good' if labels.all() else 'bad'}: "
                "CAA needs both (with pairs=on_policy, use more train rows or another model)"
            )
        groups = torch.arange(len(labels)) // 2 if self.hparams.pairs == "corrupted" else None
        probes = fit_probes(acts, labels, groups=groups, seed=self.hparams.seed)
        state = {
            "vectors": mean_difference(acts, labels),
            "act_norm": acts.norm(dim=-1).mean(0),
            "probe_auc": probes.auc,
            "probe_weight": probes.weight,
            "probe_bias": probes.bias,
        }
        if self._state_key(key)["icl"]:
            state["icl_vectors"] = self._icl_vectors()
        if self.trainer.is_global_zero:
            cache.save(self._state_key(key), state)
        self._set_steering(state, key)
        log.info("fitted CAA vectors on %d examples; probe-best layer %d", len(labels), self.layer)

    def _icl_vectors(self) -> Tensor:
        """DAC's own vectors from train examples: few-shot prompt minus zero-shot prompt."""
        dm, hp = self.trainer.datamodule, self.hparams
        rows = dm.splits["train"][: hp.dac_icl_examples]
        if not dm.exemplars:
            raise SteerlightError(
                "dac_vectors=icl needs in-context exemplars: set data.n_shots > 0"
            )
        return icl_step_vectors(
            self.model,
            self.tokenizer,
            [r["prompt"] for r in rows],
            [self.preset.render(r["question"], (), self.tokenizer) for r in rows],
            [self.preset.continuation(r["answer"]) for r in rows],
            "all",
            T=hp.dac_steps,
        )

    def _set_steering(self, state: dict[str, Tensor], key: dict[str, Any]) -> None:
        self.steering, self._fitted_key = dict(state), key
        auc = state["probe_auc"].tolist()
        for i, value in enumerate(auc):
            self.log(f"probe_auc/layer_{i:02d}", value)
        if self._tensorboard() is not None:
            self._tensorboard().add_figure("probes/auc_per_layer", _auc_figure(auc), 0)

    def _tensorboard(self):
        """The TensorBoard writer on the main process, or None with another (or no) logger."""
        from lightning.pytorch.loggers import TensorBoardLogger

        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            return self.logger.experiment
        return None

    # -- validation and test -------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._finish_fit()  # in `fit`, Lightning validates before on_train_epoch_end
        self.samples["val"] = []

    def on_test_epoch_start(self) -> None:
        self.samples["test"], self.records = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, self.generate_batch(batch).texts, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The steered model and the unsteered baseline on the same questions (paired)."""
        steered = self.generate_batch(batch).texts
        baseline = self.generate_batch(batch, steered=False).texts if self.steers else steered
        self._score(batch, steered, "test")
        self._score(batch, baseline, "test_baseline")
        for i, ex_id in enumerate(batch["ids"]):
            gold = batch["golds"][i]
            record = {"id": ex_id, "question": batch["questions"][i], "gold": gold}
            for name, texts in (("baseline", baseline), ("steered", steered)):
                record[f"{name}_completion"] = texts[i]
                for mode in ("strict", "flexible"):
                    pred = extract(texts[i], mode, self.preset.answer_form)
                    record[f"{name}_extracted_{mode}"] = pred
                    record[f"{name}_correct_{mode}"] = is_correct(pred, gold)
            self.records.append(record)

    def generate_batch(self, batch: dict[str, Any], steered: bool = True):
        """Generate completions for a batch, steered as configured (or not at all)."""
        hp = self.hparams
        args = (self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"])
        memo_key = None
        if not (steered and self.steers):
            if self.generation_memo is not None:
                # Unsteered generations do not depend on the trial: a search makes them once.
                memo_key = (self.fingerprint, tuple(batch["ids"]), hp.preset, str(self.settings))
                if memo_key in self.generation_memo:
                    return self.generation_memo[memo_key]
            gen = generate(*args, self.settings, stop_strings=self.preset.stop)
        elif hp.method == "dac":
            gen = dac_generate(
                *args,
                self.layer,
                None if hp.dac_vectors == "icl" else self.steering_vector(),
                self.settings,
                self.preset.stop,
                top_p=hp.dac_top_p,
                alpha_max=hp.dac_alpha_max,
                batchmean=hp.dac_batchmean,
                positions=hp.positions,
                step_vectors=self.step_vectors() if hp.dac_vectors == "icl" else None,
            )
            self._dac_alphas.append(gen.alphas)
        else:
            width = batch["input_ids"].shape[1]
            vector = self.steering_vector()
            with steer(self.model, self.layer, vector, hp.alpha, hp.positions, prompt_len=width):
                gen = generate(*args, self.settings, stop_strings=self.preset.stop)
        self.generated_tokens += int((gen.tokens != self.tokenizer.pad_token_id).sum())
        if memo_key is not None:
            self.generation_memo[memo_key] = gen
        return gen

    def step_vectors(self) -> Tensor:
        """DAC's per-step in-context vectors at the steered layer, scaled like CAA's: (T+1, H)."""
        if "icl_vectors" not in self.steering:
            raise SteerlightError("dac_vectors=icl needs the in-context vectors: run fit first")
        layer = self.layer
        return scale_vectors(
            self.steering["icl_vectors"][:, layer],
            self.hparams.normalization,
            self.steering["act_norm"][layer],
        )

    def _log_dac(self, stage: str) -> None:
        """Per-step alpha_t mean/min/max over the epoch's rows (NaN once a row finished)."""
        alphas, self._dac_alphas = self._dac_alphas, []
        writer = self._tensorboard()
        if not alphas or writer is None:
            return
        width = max(a.shape[1] for a in alphas)
        pad = [
            torch.nn.functional.pad(a, (0, width - a.shape[1]), value=float("nan")) for a in alphas
        ]
        table = torch.cat(pad)
        live = ~table.isnan()
        for t in range(width):
            column = table[live[:, t], t]
            if len(column):
                stats = {"mean": column.mean(), "min": column.min(), "max": column.max()}
                writer.add_scalars(
                    f"{stage}/dac_alpha_by_step", {k: float(v) for k, v in stats.items()}, t
                )

    def _correct(self, text: str, gold: str, mode: str) -> bool:
        return is_correct(extract(text, mode, self.preset.answer_form), gold)

    def _score(self, batch: dict[str, Any], texts: list[str], stage: str) -> None:
        form = self.preset.answer_form
        for mode in ("strict", "flexible"):
            preds = [extract(t, mode, form) for t in texts]
            self.metrics[f"{stage}_{mode}"].update(preds, batch["golds"])
        if stage not in self.samples:
            return
        room = self.hparams.log_samples - len(self.samples[stage])
        for q, t, g in list(zip(batch["questions"], texts, batch["golds"], strict=True))[:room]:
            pred = extract(t, "strict", form)
            self.samples[stage].append(
                {
                    "question": q,
                    "completion": t,
                    "extracted": pred,
                    "gold": g,
                    "correct": is_correct(pred, g),
                }
            )

    # Accuracy accumulates over a whole run: in a `fit` with several epochs, each epoch
    # validates one shard of val, so `val/acc` after epoch r is the accuracy on r+1 shards -
    # the intermediate value the search's pruner sees.
    def on_fit_start(self) -> None:
        self._reset("val")

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._reset("val")

    def on_test_start(self) -> None:
        self._reset("test")
        self._reset("test_baseline")

    def _reset(self, stage: str) -> None:
        for mode in ("strict", "flexible"):
            self.metrics[f"{stage}_{mode}"].reset()

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
        for mode in ("strict", "flexible"):
            self.log(f"test/baseline_acc_{mode}", self.metrics[f"test_baseline_{mode}"].compute())
        self.records = [r for part in self._gather(self.records) for r in part]
        out = self.results_dir()  # on every rank: trainer.log_dir is a collective under DDP
        if self.trainer.is_global_zero:
            self._write_results(out)

    def _gather(self, items: list) -> list[list]:
        """Every process's list (one per rank), e.g. under DDP; just [items] on one device."""
        if self.trainer.world_size == 1:
            return [items]
        import torch.distributed as dist

        parts: list = [None] * self.trainer.world_size
        dist.all_gather_object(parts, items)
        return parts

    def _epoch_end(self, stage: str) -> None:
        values = {m: self.metrics[f"{stage}_{m}"].compute() for m in ("strict", "flexible")}
        for mode, value in values.items():
            self.log(f"{stage}/acc_{mode}", value)
        # `<stage>/acc` is what checkpoints and the search monitor: strict match.
        self.log(f"{stage}/acc", values["strict"], prog_bar=True)  # shown at the end of fit
        total = self.metrics[f"{stage}_strict"].total.float()  # this rank's count
        self.log(f"{stage}/questions", total, sync_dist=True, reduce_fx="sum")
        self._log_samples(stage)
        self._log_dac(stage)
        self.log_hparams_with({f"{stage}/acc": float(values["strict"])})

    def log_hparams_with(self, metrics: dict[str, float]) -> None:
        """Fill TensorBoard's HPARAMS tab: this run's hyperparameters next to its metrics."""
        if self._tensorboard() is not None:
            self.logger.log_hyperparams(dict(self.hparams), metrics)

    def _write_results(self, out: Path) -> None:
        """final_results.json, predictions.jsonl and reproducibility.json beside the checkpoint."""
        from steerlight.io import write_json, write_text
        from steerlight.report import environment, verdict

        write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        dm = self.trainer.datamodule
        write_json(
            out / "final_results.json",
            {
                "checkpoint": self.trainer.ckpt_path,
                "model": self.hparams.model_name_or_path,
                "method": self.hparams.method,
                "layer": self.layer if self.steers else None,
                "alpha": self.hparams.alpha,
                **verdict(self.records, seed=self.hparams.seed),
            },
        )
        study = out / "best.json"  # written by the search beside best.ckpt
        write_json(
            out / "reproducibility.json",
            {
                "model_hparams": dict(self.hparams),
                "data_hparams": dict(getattr(dm, "hparams", {})),
                "seed_everything": os.environ.get("PL_GLOBAL_SEED"),
                "test_data_fingerprint": getattr(dm, "fingerprints", {}).get("test"),
                "data_fingerprint": getattr(dm, "fingerprint", None),
                "base_model": {
                    "name_or_path": self.hparams.model_name_or_path,
                    "revision": self.hparams.revision,
                    "weights_fingerprint": self.fingerprint,
                },
                "study": json.loads(study.read_text()) if study.is_file() else None,
                "environment": environment(),
            },
        )
        log.info("wrote the verdict to %s", out / "final_results.json")

    def results_dir(self) -> Path:
        """Beside the checkpoint that was tested, else in the run's log folder."""
        if self.trainer.ckpt_path:
            return Path(self.trainer.ckpt_path).parent
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _log_samples(self, stage: str) -> None:
        """A markdown table of sample generations in TensorBoard's TEXT tab."""
        writer, rows = self._tensorboard(), self.samples[stage]
        if writer is None or not rows:
            return
        columns = ("question", "completion", "extracted", "gold", "correct")
        table = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        for row in rows:
            cells = (str(row[c]).replace("|", "\\|").replace("\n", "<br>") for c in columns)
            table.append("| " + " | ".join(cells) + " |")
        writer.add_text(f"{stage}/samples", "\n".join(table), self.current_epoch)

    # -- checkpoints: steering state and model identity, never the base weights ---------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}
        checkpoint["steering"] = {k: v.cpu() for k, v in self.steering.items()}
        checkpoint["base_model"] = {
            "name_or_path": self.hparams.model_name_or_path,
            "revision": self.hparams.revision,
            "weights_fingerprint": self.fingerprint,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "steering" not in checkpoint or "base_model" not in checkpoint:
            raise SteerlightError(
                "this checkpoint was not written by steerlight (no steering state)"
            )
        self.configure_model()
        saved = checkpoint["base_model"]
        if saved["weights_fingerprint"] != self.fingerprint:
            raise SteerlightError(
                f"checkpoint was fitted on {saved['name_or_path']!r} (weights "
                f"{saved['weights_fingerprint']}), but the loaded model "
                f"{self.hparams.model_name_or_path!r} has weights {self.fingerprint}: test it "
                "with the model it was fitted on, or fit a new checkpoint for this one"
            )
        self.steering = dict(checkpoint["steering"])


def _auc_figure(auc: list[float]):
    """Bar chart of held-out probe AUC per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, len(auc) * 0.3), 3))
    ax.bar(range(len(auc)), auc)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="layer", ylabel="held-out AUC", ylim=(0, 1), title="probe AUC per layer")
    fig.tight_layout()
    return fig

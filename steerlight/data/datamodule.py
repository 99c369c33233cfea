"""GSM8KDataModule: splits, prompts and left-padded, length-sorted batches."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from steerlight.answers import gold_answer
from steerlight.data.prompts import PresetName, get_preset
from steerlight.data.sources import Row, load_rows, read_exemplars
from steerlight.data.splits import check_no_leakage, holdout_indices
from steerlight.errors import SteerlightError
from steerlight.model.loading import load_tokenizer

log = logging.getLogger(__name__)


STEP_BATCHES = 8
"""Generation batches in one val/test step. The module decodes ``batch_size`` rows at a time
and a finished row's slot takes the step's next question (row refill), so only a step's last
rows decode beside finished ones; a step is also what a progress line counts."""


class GSM8KDataModule(pl.LightningDataModule):
    """Serves GSM8K (or a local / synthetic copy) as prompts for generation and scoring.

    Val is a seeded hold-out of train, test is the test split, and few-shot exemplars come from
    train minus val; a leakage guard refuses to run if a val or test question shows up on the
    train side.
    """

    def __init__(
        self,
        source: str = "openai/gsm8k",
        config_name: str = "main",
        tokenizer: Any = None,
        preset: PresetName = "gsm8k",
        n_shots: int | None = None,
        exemplars_file: str | None = None,
        val_size: int = 500,
        split_seed: int = 1234,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        batch_size: int | Literal["auto"] = 8,
        max_prompt_tokens: int = 2048,
        synthetic_train_size: int = 4000,
        synthetic_test_size: int = 500,
        num_workers: int = 0,
        val_shards: int = 1,
    ) -> None:
        """
        Args:
            source: Hugging Face dataset id, a local folder with train/test .jsonl or .parquet
                files, or ``synthetic`` for generated GSM8K-format problems (offline).
            config_name: Dataset configuration for a Hub source.
            tokenizer: Tokenizer name or path (defaults to the model's), or a tokenizer object.
            preset: Prompt format, named after the lm-evaluation-harness task.
            n_shots: Number of few-shot exemplars; ``None`` uses the preset's default.
            exemplars_file: JSON lines of fixed exemplars (``question``/``answer``) to use instead
                of exemplars drawn from train.
            val_size: Questions held out of train for validation (the search's split).
            split_seed: Seed for the val hold-out, the exemplar draw and synthetic data.
            limit_train: Use at most this many train rows (``None``: all).
            limit_val: Use at most this many val questions (``None``: all of ``val_size``).
            limit_test: Use at most this many test questions, from the start (``None``: all).
            batch_size: Prompts decoded at once (val/test steps hold 8 times as many: a
                finished row's place goes to the next prompt); ``auto``: measured on this
                machine once the model is loaded (`steerlight.model.batch_size`).
            max_prompt_tokens: Longer prompts lose exemplars until they fit.
            synthetic_train_size: Train rows generated when ``source`` is ``synthetic``.
            synthetic_test_size: Test rows generated when ``source`` is ``synthetic``.
            num_workers: DataLoader worker processes.
            val_shards: Split val into this many fixed shards and serve one per `fit` epoch
                (with ``trainer.reload_dataloaders_every_n_epochs: 1``): the search's pruning
                rounds. ``validate`` always serves all of val.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.preset = get_preset(preset)
        self.n_shots = self.preset.default_shots if n_shots is None else n_shots
        if self.n_shots < 0:
            raise SteerlightError(f"n_shots={n_shots} is invalid: use 0 or more")
        self.batch_size: int | None = None if batch_size == "auto" else batch_size
        """Rows decoded at once (None: ``auto``, not measured yet: `resolve_batch_size`)."""
        for name in ("val_size", "max_prompt_tokens", "val_shards"):
            if getattr(self.hparams, name) < 1:
                raise SteerlightError(f"{name}={getattr(self.hparams, name)} must be at least 1")
        for name in ("limit_train", "limit_val", "limit_test"):
            value = getattr(self.hparams, name)
            if value is not None and value < 1:
                raise SteerlightError(
                    f"data.{name}={value} is invalid: use 1 or more, or null for the whole split"
                )
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise SteerlightError(
                f"data.batch_size={batch_size!r} is invalid: use 1 or more, or auto"
            )
        if not str(source).strip():
            raise SteerlightError(
                "data.source is empty: use a Hub dataset id (openai/gsm8k), a folder with "
                "train.jsonl and test.jsonl, or synthetic"
            )
        self.splits: dict[str, list[dict[str, Any]]] = {}
        self.exemplars: list[Row] = []
        self.fingerprint = ""
        self.fingerprints: dict[str, str] = {}

    # -- setup ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        rows = load_rows(
            hp.source,
            config_name=hp.config_name,
            synthetic_sizes=(hp.synthetic_train_size, hp.synthetic_test_size),
            seed=hp.split_seed,
        )
        train_all, test = rows["train"], rows["test"]
        val_idx = set(holdout_indices(len(train_all), hp.val_size, hp.split_seed))
        val = [_example(f"train-{i}", r) for i, r in enumerate(train_all) if i in val_idx]
        rest = [_example(f"train-{i}", r) for i, r in enumerate(train_all) if i not in val_idx]

        if hp.exemplars_file:
            self.exemplars = read_exemplars(hp.exemplars_file)[: self.n_shots]
        else:
            if self.n_shots > len(rest):
                raise SteerlightError(f"n_shots={self.n_shots} exceeds the {len(rest)} train rows")
            self.exemplars = random.Random(f"{hp.split_seed}-exemplars").sample(rest, self.n_shots)
        test = [_example(f"test-{i}", r) for i, r in enumerate(test)]

        splits = {
            "train": rest[: hp.limit_train],
            "val": val[: hp.limit_val],
            "test": test[: hp.limit_test],
        }
        check_no_leakage(
            {s: [ex["question"] for ex in splits[s]] for s in ("val", "test")},
            {
                "train": (ex["question"] for ex in rest),
                "exemplars": (ex["question"] for ex in self.exemplars),
            },
        )
        check_no_leakage(
            {"test": [ex["question"] for ex in splits["test"]]},
            {"val": [ex["question"] for ex in splits["val"]]},
        )
        self.fingerprints = {
            name: _fingerprint(rows, self.exemplars, self.preset.name)
            for name, rows in splits.items()
        }
        self.fingerprint = _fingerprint(
            [ex for rows in splits.values() for ex in rows], self.exemplars, self.preset.name
        )
        tok = self._load_tokenizer()
        for name in ("val", "test", "train"):
            self.splits[name] = self._with_prompts(splits[name], tok)
        log.info(
            "GSM8K data: train %d, val %d, test %d, %d-shot %s prompts",
            *(len(self.splits[s]) for s in ("train", "val", "test")),
            len(self.exemplars),
            self.preset.name,
        )

    def _load_tokenizer(self):
        if self.tokenizer is None:
            raise SteerlightError("data.tokenizer is not set: pass a tokenizer name or path")
        if isinstance(self.tokenizer, str):  # a name (`tiny`, an alias) resolves where it loads
            self.tokenizer = load_tokenizer(self.tokenizer)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def _with_prompts(self, examples: list[dict[str, Any]], tok) -> list[dict[str, Any]]:
        """Render and tokenize prompts, dropping exemplars where a prompt is too long."""
        chat = self.preset.name == "chat"
        limit = self.hparams.max_prompt_tokens
        texts = [self.preset.render(ex["question"], self.exemplars, tok) for ex in examples]
        ids = tok(texts, add_special_tokens=not chat)["input_ids"] if texts else []
        out = []
        for ex, prompt, prompt_ids in zip(examples, texts, ids, strict=True):
            k = len(self.exemplars)
            while len(prompt_ids) > limit and k > 0:
                k -= 1
                prompt = self.preset.render(ex["question"], self.exemplars[:k], tok)
                prompt_ids = tok(prompt, add_special_tokens=not chat)["input_ids"]
            if len(prompt_ids) > limit:
                raise SteerlightError(
                    f"{ex['id']}: the zero-shot prompt has {len(prompt_ids)} tokens, over "
                    f"max_prompt_tokens={limit}; raise max_prompt_tokens"
                )
            out.append({**ex, "prompt": prompt, "input_ids": prompt_ids})
        # Longest first: batches of similar length waste little padding, and OOM shows up early.
        return sorted(out, key=lambda ex: -len(ex["input_ids"]))

    # -- batch size -------------------------------------------------------------------------

    def longest_prompt(self) -> int:
        """Tokens of the longest val or test prompt (what `auto` sizes a batch for)."""
        if not self.splits:
            self.setup()
        return max(
            (len(ex["input_ids"]) for s in ("val", "test") for ex in self.splits[s]), default=1
        )

    def measure_batch_size(self, model, fingerprint: str, new_tokens: int) -> None:
        """``auto``: the rows decoded at once, measured for `model` where it is (for the
        longest prompt plus `new_tokens`, at most the questions of a pass)."""
        from steerlight.model.batch_size import find_batch_size

        length = self.longest_prompt() + new_tokens
        questions = max(len(self.splits["val"]), len(self.splits["test"]), 1)
        self.resolve_batch_size(find_batch_size(model, length, fingerprint, questions))

    def resolve_batch_size(self, rows: int) -> None:
        """Set the rows decoded at once where ``batch_size`` is ``auto``."""
        if self.batch_size is None:
            self.batch_size = int(rows)

    def rows_at_once(self) -> int:
        if self.batch_size is None:
            raise SteerlightError(
                "data.batch_size is auto but was not measured: it is measured when the model "
                "loads in fit, validate or test (or give a number)"
            )
        return self.batch_size

    # -- loaders ----------------------------------------------------------------------------

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad a list of examples into one batch."""
        padded = self.tokenizer.pad(
            {"input_ids": [ex["input_ids"] for ex in examples]},
            padding=True,
            return_tensors="pt",
        )
        return {
            "ids": [ex["id"] for ex in examples],
            "questions": [ex["question"] for ex in examples],
            "answers": [ex["answer"] for ex in examples],
            "golds": [ex["gold"] for ex in examples],
            "prompts": [ex["prompt"] for ex in examples],
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "slots": self.rows_at_once(),
        }

    def _loader(
        self, split: str, rows: list[dict[str, Any]] | None = None, batches: int = 1
    ) -> DataLoader:
        """A loader of `split` (or `rows`) whose steps hold `batches` generation batches."""
        if not self.splits:
            self.setup()
        rows = self.splits[split] if rows is None else rows
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            # Lightning's default DistributedSampler pads ranks with repeated questions, which
            # would count them twice; this one gives every question to exactly one rank.
            sampler = UnrepeatedDistributedSampler(
                rows, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            rows,
            batch_size=self.rows_at_once() * batches,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        shards = self.hparams.val_shards
        trainer = self.trainer
        if shards == 1 or trainer is None or trainer.state.fn != "fit":
            return self._loader("val", batches=STEP_BATCHES)
        # Strided shards of the length-sorted split: every round sees short and long prompts.
        shard = self.splits["val"][trainer.current_epoch % shards :: shards]
        return self._loader("val", shard, batches=STEP_BATCHES)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batches=STEP_BATCHES)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", batches=STEP_BATCHES)


def _example(id_: str, row: Row) -> dict[str, Any]:
    return {
        "id": id_,
        "question": row["question"],
        "answer": row["answer"],
        "gold": gold_answer(row["answer"]),
    }


def _fingerprint(rows: list[dict], exemplars: list[Row], preset: str) -> str:
    """A short hash of exactly which rows, exemplars and prompt format are served."""
    content = [preset, [(r["question"], r["answer"]) for r in (*exemplars, *rows)]]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]

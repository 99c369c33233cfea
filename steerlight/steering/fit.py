"""Fitting on the train split: contrastive texts -> activations -> CAA vectors and probes.

`SteeredLM.fit` feeds train batches through `TrainFit`: it loads the fitted state from the
activation cache when everything that determines it is unchanged, else collects all-layer
activations batch by batch and fits the state once at the end of the epoch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from steerlight.errors import SteerlightError
from steerlight.model.prefix import PrefixCache
from steerlight.steering import method as methods
from steerlight.steering.activations import (
    ActivationCache,
    ReadPosition,
    read_activations,
    read_mask_for,
)
from steerlight.steering.caa import corrupt_solution, mean_difference
from steerlight.steering.probes import fit_probes

log = logging.getLogger(__name__)

Pairs = Literal["corrupted", "on_policy"]


def corrupted_pairs(
    batch: Mapping[str, Any], continuation: Callable[[str], str], seed: int
) -> tuple[list[str], list[bool], list[int]]:
    """Gold solution (good) and the same solution with consistently altered numbers (bad), per
    question: texts, labels and the prompt length in tokens of each text."""
    texts, labels, lens = [], [], []
    prompt_lens = batch["attention_mask"].sum(1).tolist()
    for ex_id, prompt, answer, n in zip(
        batch["ids"], batch["prompts"], batch["answers"], prompt_lens, strict=True
    ):
        bad = corrupt_solution(answer, random.Random(f"{seed}:{ex_id}"))
        texts += [prompt + continuation(answer), prompt + continuation(bad)]
        labels += [True, False]
        lens += [n, n]
    return texts, labels, lens


def contrastive_texts(
    batch: Mapping[str, Any],
    preset: Any,
    pairs: Pairs,
    seed: int,
    unsteered: Callable[[], list[str]],
) -> tuple[list[str], list[bool], list[int]]:
    """Texts, labels (True = good) and prompt lengths for a train batch: `corrupted` pairs, or
    (`on_policy`) the model's own unsteered completions labelled by strict correctness."""
    if pairs == "corrupted":
        return corrupted_pairs(batch, preset.continuation, seed)
    from steerlight.answers import extract, is_correct

    texts = unsteered()
    form, golds = preset.answer_form, batch["golds"]
    labels = [is_correct(extract(t, "strict", form), g) for t, g in zip(texts, golds, strict=True)]
    texts = [p + t for p, t in zip(batch["prompts"], texts, strict=True)]
    return texts, labels, batch["attention_mask"].sum(1).tolist()


def solution_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    prompt_lens: Sequence[int],
    read_position: ReadPosition,
    add_special_tokens: bool = True,
    prefixes: PrefixCache | None = None,
) -> Tensor:
    """All-layer activations read over each text's solution span: (B, L, H) fp32 on the CPU.
    `prefixes` keeps the prompts' shared prefix (few-shot exemplars) across batches."""
    device = next(model.parameters()).device
    enc = tokenizer(
        list(texts), padding=True, return_tensors="pt", add_special_tokens=add_special_tokens
    ).to(device)
    mask = enc["attention_mask"]
    start = mask.shape[1] - mask.sum(1) + torch.tensor(list(prompt_lens), device=device)
    read = read_mask_for(mask, start.clamp(max=mask.shape[1] - 1), read_position)
    return read_activations(model, enc["input_ids"], mask, read, prefixes).cpu()


def fit_state(
    acts: Tensor, labels: Tensor, pairs: Pairs, seed: int, direction: Mapping | None = None
) -> dict[str, Tensor]:
    """Steering vectors per layer (CAA's mean difference, or the method named by `direction`,
    a method's `fit_key` entry), mean activation norms and per-layer probes."""
    if labels.all() or not labels.any():
        raise SteerlightError(
            f"the {len(labels)} train examples are all {'good' if labels.all() else 'bad'}: "
            "CAA needs both (with pairs=on_policy, use more train rows or another model)"
        )
    # corrupted pairs share a question: the probes' held-out split keeps both in one side
    groups = torch.arange(len(labels)) // 2 if pairs == "corrupted" else None
    probes = fit_probes(acts, labels, groups=groups, seed=seed)
    vectors = None
    if direction is not None:
        vectors = methods.get(direction["method"]).direction(acts, labels, pairs, direction)
    return {
        "vectors": mean_difference(acts, labels) if vectors is None else vectors,
        "act_norm": acts.norm(dim=-1).mean(0),
        "probe_auc": probes.auc,
        "probe_weight": probes.weight,
        "probe_bias": probes.bias,
        "probe_mean": probes.mean,
        "probe_std": probes.std,
    }


class TrainFit:
    """One epoch of fitting: cached state, cached activations, or activations collected now.

    `key` names everything the activations depend on; `state_key` adds what else the fitted
    state depends on. Both are cache keys (see `ActivationCache`).
    """

    def __init__(self, cache: ActivationCache, key: dict[str, Any], state_key: dict[str, Any]):
        self.cache, self.key, self.state_key = cache, key, state_key
        self.state = cache.load(state_key)
        self._cached = None if self.state is not None else cache.load(key)
        self._acts: list[Tensor] = []
        self._labels: list[Tensor] = []
        self.prefixes = PrefixCache()  # the train prompts' shared prefix, run once per fit

    @property
    def collecting(self) -> bool:
        """Whether train batches must be read (nothing usable was cached)."""
        return self.state is None and self._cached is None

    def add(self, acts: Tensor, labels: Sequence[bool]) -> None:
        self._acts.append(acts)
        self._labels.append(torch.tensor(list(labels)))

    def finish(
        self,
        pairs: Pairs,
        seed: int,
        gather: Callable[[list], list[list]],
        writer: bool,
        extra: Callable[[], dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """The fitted state; `gather` collects every rank's lists, `writer` saves the cache."""
        if self.state is not None:
            return self.state
        if self._cached is not None:
            acts, labels = self._cached["acts"], self._cached["labels"].bool()
        else:
            acts = torch.cat([a for part in gather(self._acts) for a in part])
            labels = torch.cat([y for part in gather(self._labels) for y in part])
            if writer:
                self.cache.save(self.key, {"acts": acts, "labels": labels.to(torch.uint8)})
        self._acts, self._labels, self._cached = [], [], None
        state = fit_state(acts, labels, pairs, seed, self.state_key.get("direction"))
        if extra is not None:
            state.update(extra())
        if writer:
            self.cache.save(self.state_key, state)
        fitted = (self.state_key.get("direction") or {}).get("method", "CAA")
        best = int(state["probe_auc"].argmax())  # the layer `layer: auto` steers
        log.info(
            "fitted %s vectors and probes on %d train examples; layer auto: layer %d (its probe "
            "separates best, AUC %.3f)",
            fitted,
            len(labels),
            best,
            float(state["probe_auc"][best]),
        )
        self.state = state
        return state


def fit_keys(
    hparams: Mapping[str, Any],
    fingerprint: str,
    datamodule: Any,
    trainer: Any,
    settings: Any,
    dac: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cache keys of a fit: what its activations depend on, and what its state adds."""
    import dataclasses

    key = {
        "model": hparams["model_name_or_path"],
        "revision": hparams["revision"],
        "weights": fingerprint,
        "dtype": hparams["dtype"],
        "data": getattr(datamodule, "fingerprints", {}).get("train"),
        "preset": hparams["preset"],
        "pairs": hparams["pairs"],
        "read_position": hparams["read_position"],
        "seed": hparams["seed"],
        "limit_train_batches": trainer.limit_train_batches,
        "world_size": trainer.world_size,
        "batch_size": getattr(datamodule, "batch_size", None),
    }
    if hparams["pairs"] == "on_policy":
        key["generation"] = dataclasses.asdict(settings)
    fit = methods.get(hparams["method"]).fit_key({**hparams, "dac": dataclasses.asdict(dac)})
    return key, {**key, "kind": "steering", **fit}


def icl_vectors(model: nn.Module, tokenizer: Any, preset: Any, datamodule: Any, dac: Any):
    """DAC's own vectors from train examples: few-shot prompt minus zero-shot prompt."""
    from steerlight.steering.icl import icl_step_vectors

    rows = datamodule.splits["train"][: dac.icl_examples]
    if not datamodule.exemplars:
        raise SteerlightError("dac.vectors=icl needs in-context exemplars: set data.n_shots > 0")
    vectors = icl_step_vectors(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        [preset.render(r["question"], (), tokenizer) for r in rows],
        [preset.continuation(r["answer"]) for r in rows],
        "all",
        T=dac.steps,
    )
    return {"icl_vectors": vectors}

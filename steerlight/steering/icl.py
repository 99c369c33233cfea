"""DAC's own vector source: in-context prompt minus zero-shot prompt, step by step.

`icl_step_vectors` reads, for each example, the layers' outputs at the columns that predict
each continuation token under a few-shot and a zero-shot prompt; the mean difference per step is
the vector `steerlight.steering.dac.dac_generate` applies at that step (``step_vectors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerlight.model.layers import decoder_layers, resolve_layer
from steerlight.steering.activations import read_layers

LayerChoice = int | Sequence[int] | Literal["all"]


def _layer_indices(model: nn.Module, layer_or_all: LayerChoice) -> list[int]:
    if isinstance(layer_or_all, str):
        if layer_or_all != "all":
            raise ValueError(
                f"layer_or_all must be an int, a list of ints or 'all', got {layer_or_all!r}"
            )
        return list(range(len(decoder_layers(model))))
    if isinstance(layer_or_all, Sequence):
        return [resolve_layer(model, i) for i in layer_or_all]
    return [resolve_layer(model, layer_or_all)]


def _read_columns(
    model: nn.Module, layers: list[int], ids: Tensor, mask: Tensor, cols: Tensor
) -> Tensor:
    """One forward; the outputs of `layers` at columns `cols` (b, n) of each row: (b, n, L, H)."""
    index = cols[..., None]

    def gather(hidden: Tensor) -> Tensor:
        return hidden.gather(1, index.expand(-1, -1, hidden.shape[-1]))

    with read_layers(model, layers, gather) as got:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return torch.stack([got[i] for i in layers], dim=2)


@torch.no_grad()
def _continuation_acts(
    model: nn.Module,
    prompt_ids: list[list[int]],
    cont_ids: list[list[int]],
    layers: list[int],
    pad_id: int,
    batch_size: int,
) -> list[Tensor]:
    """Per example (n_i, L, H) fp32: the layers' outputs at the columns predicting each of its
    n_i continuation tokens (last prompt token, then continuation tokens 0 .. n_i - 2)."""
    device = next(model.parameters()).device
    out: list[Tensor] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = slice(start, start + batch_size)
        seqs = [p + c for p, c in zip(prompt_ids[chunk], cont_ids[chunk], strict=True)]
        steps = [len(c) for c in cont_ids[chunk]]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding: real tokens never see the pads
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        first = torch.tensor([len(s) - n - 1 for s, n in zip(seqs, steps, strict=True)])
        cols = (first[:, None] + torch.arange(max(steps))[None]).clamp(max=width - 1)
        acts = _read_columns(model, layers, ids.to(device), mask.to(device), cols.to(device))
        out += [acts[i, :n].cpu() for i, n in enumerate(steps)]
    return out


@torch.no_grad()
def icl_step_vectors(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts_icl: Sequence[str],
    prompts_zero: Sequence[str],
    continuations: Sequence[str],
    layer_or_all: LayerChoice = "all",
    T: int = 8,
    *,
    batch_size: int = 8,
) -> Tensor:
    """DAC's vectors: in-context prompt minus zero-shot prompt, step by step: (T + 1, L, H) fp32.

    Each example is a prompt pair sharing one continuation (e.g. the model's own in-context
    answer). Entry ``t < T`` is the mean over examples of ``h(icl + continuation) -
    h(zero + continuation)`` at the column that predicts continuation token ``t`` (the last
    prompt token for ``t = 0``, continuation token ``t - 1`` after) - the column `dac_generate`
    steers with vector t. Entry ``T`` is the mean over every later column of every example.
    ``L`` is one layer for an int, else the listed layers (or all of them) in order.
    """
    n = len(prompts_icl)
    if n == 0 or len(prompts_zero) != n or len(continuations) != n:
        raise ValueError(
            "need as many in-context prompts, zero-shot prompts and continuations (at least one); "
            f"got {n}, {len(prompts_zero)} and {len(continuations)}"
        )
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")
    layers = _layer_indices(model, layer_or_all)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cont_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
    for i, c in enumerate(cont_ids):
        if not c:
            raise ValueError(f"continuation {i} is empty")

    def ids(prompts: Sequence[str]) -> list[list[int]]:
        return [tokenizer(p).input_ids for p in prompts]

    icl = _continuation_acts(model, ids(prompts_icl), cont_ids, layers, pad_id, batch_size)
    zero = _continuation_acts(model, ids(prompts_zero), cont_ids, layers, pad_id, batch_size)
    sums = torch.zeros(T + 1, *icl[0].shape[1:])
    counts = torch.zeros(T + 1)
    for a, b in zip(icl, zero, strict=True):
        diff = a - b
        k = min(len(diff), T)
        sums[:k] += diff[:k]
        counts[:k] += 1
        if len(diff) > T:
            sums[T] += diff[T:].sum(0)
            counts[T] += len(diff) - T
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0])
        raise ValueError(
            f"no continuation is long enough for step {missing} (T={T}); "
            "use a smaller T or longer continuations"
        )
    return sums / counts[:, None, None]

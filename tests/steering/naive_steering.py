"""Naive references for the tests: CAA and DAC by full forwards over the whole sequence, no cache.

What the cached implementations must equal token for token on every architecture: each step
runs the model on every column so far (``use_cache=False``), with the inputs ``generate`` would
pass (the 2D mask, position ids from it where the model takes them).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from steerlight.model.layers import decoder_layers
from steerlight.steering.dac_strength import dac_alpha

EOS = 2
"""The tiny tokenizer's </s>."""


def full_forward_kwargs(model: nn.Module, ids: Tensor, mask: Tensor) -> dict:
    """A cache-free forward over every column, with the inputs ``generate`` would pass."""
    params = inspect.signature(model.forward).parameters
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if "position_ids" in params:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return kwargs


def _extend(ids: Tensor, mask: Tensor, nxt: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


@torch.no_grad()
def naive_greedy(model: nn.Module, ids: Tensor, mask: Tensor, steps: int, pad: int) -> Tensor:
    """Greedy tokens (B, <= steps), recomputing every column at every step; finished rows get
    `pad`, as in ``generate``. Steering hooks active around the call apply to every forward."""
    tokens = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(steps):
        nxt = model(**full_forward_kwargs(model, ids, mask)).logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        done |= nxt == EOS
        if done.all():
            break
        ids, mask = _extend(ids, mask, nxt)
    return torch.stack(tokens, 1)


def _column_hook(model: nn.Module, layer: int, scale: Tensor, vectors: Tensor, valid: Tensor):
    """Add ``scale[b, c] * vectors[c]`` to `layer`'s output at every non-pad column c."""

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        add = (scale * valid)[..., None] * vectors[None].to(h.dtype)
        h = h + add.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, (tuple, list)) else h

    return decoder_layers(model)[layer].register_forward_hook(hook)


def _last_logits(model, layer: int, kwargs: dict, scale: Tensor | None, vectors: Tensor) -> Tensor:
    """Next-token logits of one full forward, steered per column when `scale` (B, S) is given."""
    if scale is None:
        return model(**kwargs).logits[:, -1].float()
    handle = _column_hook(model, layer, scale, vectors, kwargs["attention_mask"].float())
    try:
        return model(**kwargs).logits[:, -1].float()
    finally:
        handle.remove()


@torch.no_grad()
def naive_dac(
    model,
    ids,
    mask,
    vectors,
    *,
    layer,
    alpha_max,
    top_p,
    batchmean,
    positions,
    steps,
    pad,
    eos=(EOS,),
) -> tuple[Tensor, Tensor]:
    """DAC as defined: at every step, three forwards over the whole sequence, no cache.

    Column c is steered with the vector of its step k(c) (the step that first fed it:
    ``max(c - (P - 1), 0)``) - at ``alpha_max`` in the probe pass and at the strength chosen at
    step k(c) in the applied pass, as the reference implementation does. Returns the tokens
    (B, <= steps) and the strengths (NaN once a row has finished: a token of `eos`).
    """
    n, prompt_len = ids.shape
    first = {"generated": prompt_len, "prompt_end+generated": prompt_len - 1, "all": 0}[positions]
    history = torch.zeros(n, 0)
    tokens, alphas = [], []
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(steps):
        cols = torch.arange(ids.shape[1])
        step_of = (cols - (prompt_len - 1)).clamp(min=0)
        col_vectors = vectors[step_of.clamp(max=len(vectors) - 1)]
        steered = (cols >= first).float()[None].expand(n, -1)
        kwargs = full_forward_kwargs(model, ids, mask)

        p = _last_logits(model, layer, kwargs, None, col_vectors)
        q = _last_logits(model, layer, kwargs, alpha_max * steered, col_vectors)
        alpha = dac_alpha(p, q, top_p, alpha_max, batchmean)
        history = torch.cat([history, alpha[:, None]], dim=1)
        applied = history.gather(1, step_of[None].expand(n, -1).clamp(max=t)) * steered
        nxt = _last_logits(model, layer, kwargs, applied, col_vectors).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        alphas.append(torch.where(done, torch.full_like(alpha, float("nan")), alpha))
        tokens.append(nxt)
        done = done | torch.isin(nxt, torch.tensor(list(eos)))
        if done.all():
            break
        ids, mask = _extend(ids, mask, nxt)
    return torch.stack(tokens, 1), torch.stack(alphas, 1)

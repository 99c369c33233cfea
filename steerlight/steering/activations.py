"""All-layer activations in one forward pass, and their fingerprinted safetensors cache."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from steerlight.io import atomic_path
from steerlight.model.generation import ChunkForward, position_ids_from_mask
from steerlight.model.layers import decoder_layers, layer_hidden_states
from steerlight.model.prefix import PrefixCache, common_prefix

log = logging.getLogger(__name__)

ReadPosition = Literal["last", "mean"]


@contextmanager
def read_layers(
    model: nn.Module, layers: Sequence[int], reduce: Callable[[Tensor], Tensor]
) -> Iterator[dict[int, Tensor]]:
    """The one layer reader: within the block, each forward stores ``reduce(output)`` of every
    decoder layer in `layers` (output = the block's hidden states, fp32) under its index.

    Read where steering writes: at the output of each decoder block (the last entry of
    `output_hidden_states` is after the final norm in most models, so it is not used). The
    hooks are removed when the block ends, also on an exception.
    """
    blocks = decoder_layers(model)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    got: dict[int, Tensor] = {}

    def make_hook(i: int) -> Callable:
        def hook(_module, _args, output):
            # one line naming the model type where a layer's output is not (B, T, H)
            got[i] = reduce(layer_hidden_states(output, model_type, i, None).float())

        return hook

    handles = [blocks[i].register_forward_hook(make_hook(i)) for i in layers]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def read_activations(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    read_mask: Tensor,
    prefixes: PrefixCache | None = None,
) -> Tensor:
    """Every decoder layer's output, reduced over the positions in `read_mask`: (B, L, H) fp32.

    The reduction is a masked mean; pass a one-hot `read_mask` to read a single position.
    Logits are computed for the last position only where the model allows it: over every
    position they were a third of the pass on a 32k-vocabulary Llama (`scripts/bench`).

    With `prefixes`, the tokens every row shares before its first read position (few-shot
    exemplars) run once, kept in `prefixes` for the next batches, and each row reads only its
    own tokens on top of them (`steerlight.model.prefix`; the plain pass where it does not
    apply).
    """
    n = len(decoder_layers(model))
    weights = read_mask.float() / read_mask.sum(1, keepdim=True).clamp(min=1)
    shared, forward = _shared_prefix(model, input_ids, attention_mask, read_mask, prefixes)

    def masked_mean(hidden: Tensor) -> Tensor:
        w = weights[:, weights.shape[1] - hidden.shape[1] :]  # (the own tokens: last columns)
        return torch.einsum("bth,bt->bh", hidden, w.to(hidden.device))

    with read_layers(model, range(n), masked_mean) as out:
        rows = [row[m.bool()] for row, m in zip(input_ids, attention_mask, strict=True)]
        if not shared or prefixes.prefill(forward, rows, shared, 0) is None:
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                **skip_logits_kwargs(model),
                **position_kwargs(model, attention_mask),
            )
    return torch.stack([out[i] for i in range(n)], dim=1)


def _shared_prefix(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    read_mask: Tensor,
    prefixes: PrefixCache | None,
) -> tuple[int, ChunkForward | None]:
    """How many leading tokens of every row run once (0: none), their cache already in
    `prefixes` (run here, outside the layer readers, which read the rows' own tokens only)."""
    if prefixes is None or prefixes.unsupported is not None:
        return 0, None
    rows = [row[m.bool()] for row, m in zip(input_ids, attention_mask, strict=True)]
    pads = attention_mask.shape[1] - attention_mask.sum(1)
    first_read = (read_mask.int().argmax(1) - pads).min()  # (a row's own index of its first read)
    shared = min(common_prefix(rows), int(first_read))
    forward = ChunkForward(model, padded=True)
    return prefixes.cache_of(forward, rows[0][: max(shared, 0)]), forward


def position_kwargs(model: nn.Module, attention_mask: Tensor) -> dict[str, Tensor]:
    """Position ids from the mask, as generation gives them (a row's positions do not depend
    on its left padding: models with absolute position embeddings count pads otherwise)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return (
        {"position_ids": position_ids_from_mask(attention_mask)} if "position_ids" in params else {}
    )


def skip_logits_kwargs(model: nn.Module) -> dict[str, int]:
    """Forward arguments that keep the LM head to one position, where the model takes them."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    for name in ("logits_to_keep", "num_logits_to_keep"):  # Transformers 5, then 4.x
        if name in params:
            return {name: 1}
    return {}


def read_mask_for(attention_mask: Tensor, start: Tensor, how: ReadPosition) -> Tensor:
    """Positions to read in a left-padded batch: the solution span from column `start` (B,) on.

    `last` keeps only the final token of each row; `mean` keeps every solution token.
    """
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    mask = (cols[None, :] >= start[:, None]) & attention_mask.bool()
    if how == "last":
        mask = torch.zeros_like(mask)
        mask[:, -1] = True  # left padding: every row ends at the last column
    return mask


class ActivationCache:
    """Safetensors files keyed by everything that determines the activations.

    A file whose stored key or tensors do not match, or that cannot be read, is rebuilt
    with a warning. Writes go to a temp file that is renamed into place, so a killed run
    never leaves a half-written file behind.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: Mapping[str, object]) -> Path:
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]
        return self.directory / f"activations-{digest}.safetensors"

    def load(self, key: Mapping[str, object]) -> dict[str, Tensor] | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != _canonical(key):
                    raise ValueError("its key does not match")
                return {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # corrupt or foreign file: never trusted, always rebuilt
            warnings.warn(
                f"activation cache {path} is unusable ({err}); rebuilding it", stacklevel=2
            )
            return None

    def save(self, key: Mapping[str, object], tensors: Mapping[str, Tensor]) -> Path:
        from safetensors.torch import save_file

        path = self.path(key)
        with atomic_path(path) as tmp:
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(tensors, str(tmp), metadata={"key": _canonical(key)})
        return path


def _canonical(key: Mapping[str, object]) -> str:
    return json.dumps(key, sort_keys=True, default=str)

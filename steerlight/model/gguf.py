"""GGUF files (llama.cpp's format) as a model source, converted once to a cached folder.

Transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``, with the ``gguf``
package) by dequantising every tensor, which takes tens of seconds. `gguf_model_folder` does
that once per file content: the model (in float32) and its tokenizer are saved with
``save_pretrained`` under ``$STEERLIGHT_HOME/gguf/<sha256 prefix>/``, written into a temporary
folder beside it and renamed into place, so later loads read safetensors in about a second and
a killed conversion leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from steerlight.errors import SteerlightError
from steerlight.io import share_folder, steerlight_home

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""
_MARKER = "steerlight_gguf.json"
"""Written last into a converted folder: a folder without it is not a finished conversion."""
_FORMAT = 1
_DONE: dict[tuple[str, int, int], Path] = {}  # (file, size, mtime) -> its converted folder


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file that `path` names: a ``.gguf`` file, or a folder without a ``config.json``
    that holds exactly one; None for anything else (a saved model folder, a Hub id)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" or _has_magic(path) else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SteerlightError(
            f"model folder {path} holds {len(found)} GGUF files ({names}): pass one of them "
            "as model.model_name_or_path"
        )
    return found[0] if found else None


def gguf_model_folder(file: Path) -> Path:
    """The cached safetensors folder (model and tokenizer) converted from the GGUF `file`."""
    file = file.resolve()
    stat = file.stat()
    memo = (str(file), stat.st_size, stat.st_mtime_ns)
    if memo in _DONE and _is_complete(_DONE[memo]):
        return _DONE[memo]
    if not _has_magic(file):
        raise SteerlightError(
            f"model {file} is not a GGUF file (it does not start with 'GGUF'): pass a GGUF "
            "file, a folder holding a saved model (config.json and weights), or a Hub id"
        )
    digest = _sha256(file)
    final = steerlight_home() / "gguf" / digest[:16]
    if _is_complete(final):
        log.info("GGUF %s: loading its converted copy %s", file.name, final)
    else:
        start = time.perf_counter()
        _convert(file, final, digest)
        log.warning(
            "GGUF %s: converted once to float32 safetensors at %s in %.0f s (later loads read "
            "that folder)",
            file.name,
            final,
            time.perf_counter() - start,
        )
    _DONE[memo] = final
    return final


def _convert(file: Path, final: Path, digest: str) -> None:
    """Load `file` with Transformers' GGUF reader and save model and tokenizer into `final`."""
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # a bar redrawn with carriage returns is noise in a log file
        hf_logging.disable_progress_bar()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        try:
            import torch

            model = AutoModelForCausalLM.from_pretrained(
                file.parent, gguf_file=file.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        except ImportError as err:
            raise SteerlightError(
                f"cannot read GGUF {file}: {err} (pip install gguf accelerate)"
            ) from None
        except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as err:
            raise _gguf_error(file, err) from None  # (an unknown quant type, a shape mismatch)
        # The dequantised weights are plain tensors; only the quantizer's markers stop saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"format": _FORMAT, "source": str(file), "sha256": digest}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
        share_folder(tmp)  # mkdtemp makes 0700: a shared cache stays readable
        try:
            os.replace(tmp, final)  # atomic; fails if another process installed it first
        except OSError:
            if not _is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _gguf_error(file: Path, err: Exception) -> SteerlightError:
    """Transformers' error on a GGUF file as one line that says what it can read."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "architecture" in text and "not supported" in text:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        arch = text.split("architecture", 1)[1].split("is not", 1)[0].strip()
        readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
        return SteerlightError(
            f"GGUF {file} holds a {arch!r} model, which Transformers cannot load from GGUF; "
            f"it reads these architectures: {', '.join(readable)}"
        )
    return SteerlightError(f"cannot load GGUF {file}: {text}")


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _is_complete(folder: Path) -> bool:
    """Whether `folder` holds a finished conversion (marker, config, tokenizer, weights)."""
    try:
        saved = json.loads((folder / _MARKER).read_text())
        names = {p.name for p in folder.iterdir()}
    except (OSError, ValueError):
        return False
    return (
        saved.get("format") == _FORMAT
        and {"config.json", "tokenizer_config.json"} <= names
        and any(n.endswith(".safetensors") for n in names)
    )

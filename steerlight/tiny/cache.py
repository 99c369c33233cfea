"""The tiny model's cache: built once per recipe key, installed atomically, found again.

A build lives in ``$STEERLIGHT_HOME/tiny/<recipe key>/``. It is written into a temporary folder
next to the final one and renamed into place, so a crashed or concurrent build never leaves a
half-written cache; where ``fcntl`` exists a lock file also keeps two local processes from
training the same recipe twice.

The default recipe's build ships with the package (`SHIPPED`, 2.4 MB): on first use it is
copied into the cache in well under a second, after its weights are checked against the
SHA-256 its marker records, instead of training for minutes. ``python -m steerlight.tiny
--force`` trains it again from the recipe and says whether the bytes match the shipped copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from steerlight.io import share_folder, steerlight_home
from steerlight.tiny.recipe import BUILD_FORMAT, TinyRecipe

log = logging.getLogger(__name__)

MODEL_NAME = "tiny"
"""The model name that stands for the embedded default model."""

_MARKER = "tiny_recipe.json"
"""Written last into a build: a cache folder without it (or with another recipe) is not valid."""

SHIPPED = Path(__file__).with_name("shipped")
"""The default recipe's build as the package ships it (`scripts/ship_tiny.py` writes it)."""

_STALE_TMP_S = 24 * 3600
"""Temporary build folders older than this are leftovers of dead builds and are removed."""


def resolve_model_name(name_or_path: str) -> str:
    """`tiny` -> the embedded model's cached folder (installed on first use); other names as is."""
    if name_or_path == MODEL_NAME:
        return str(tiny_model_path())
    return name_or_path


def tiny_model_path(recipe: TinyRecipe | None = None, force: bool = False) -> Path:
    """The cached folder of the tiny model for `recipe`: the shipped copy installed (the
    default recipe), or built (minutes, once) if missing.

    Args:
        recipe: the recipe (default `TinyRecipe()`, the embedded default).
        force: rebuild even when a valid cached copy exists (it is then replaced atomically).
    """
    recipe = recipe or TinyRecipe()
    parent = steerlight_home() / "tiny"
    final = parent / recipe.key()
    if not force and _is_complete(final, recipe):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    # A copy installed atomically: it never waits for the lock of a builder (e.g. `--force`).
    if not force and _install_shipped(final, recipe):
        return final
    with _build_lock(parent / f".{recipe.key()}.lock"):
        if not force and _is_complete(final, recipe):  # another process built it meanwhile
            return final
        _remove_stale_tmp(parent, recipe.key())
        log.warning(
            "building the embedded tiny model (recipe %s) into %s: this trains a %s-layer Llama "
            "on synthetic GSM8K for %d steps, once (minutes on a CPU; progress and ETA follow)",
            recipe.key(),
            final,
            recipe.num_layers,
            recipe.steps,
        )
        # Imported here: training needs torch and Lightning, finding a cached build does not.
        from steerlight.tiny import train

        tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.key()}.tmp-", dir=parent))
        try:
            metrics = train.build_tiny_model(recipe, tmp)
            (tmp / _MARKER).write_text(
                json.dumps(
                    {
                        "format": BUILD_FORMAT,
                        "key": recipe.key(),
                        "recipe": recipe.as_json(),
                        "metrics": metrics,
                        "weights_sha256": weights_sha256(tmp),
                    },
                    indent=2,
                )
            )
            _install(tmp, final, recipe, replace_valid=force)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.warning("the embedded tiny model is ready at %s", final)
    return final


def weights_sha256(folder: Path) -> str:
    """The SHA-256 of a build's ``model.safetensors``: two builds are the same when these are."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def _install_shipped(final: Path, recipe: TinyRecipe) -> bool:
    """Copy the shipped build of `recipe` to `final`; False when there is none for `recipe`."""
    if not _is_complete(SHIPPED, recipe):
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.key()}.tmp-", dir=final.parent))
    try:
        for name in SHIPPED_FILES:
            shutil.copyfile(SHIPPED / name, tmp / name)
        expected = json.loads((tmp / _MARKER).read_text()).get("weights_sha256")
        if weights_sha256(tmp) != expected:
            log.warning(
                "the shipped tiny model in %s does not match the SHA-256 its %s records; "
                "building it from its recipe instead",
                SHIPPED,
                _MARKER,
            )
            return False
        _install(tmp, final, recipe)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "the embedded tiny model: installed at %s from the copy steerlight ships "
        "(`python -m steerlight.tiny --force` trains it again from its recipe)",
        final,
    )
    return True


SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    _MARKER,
)
"""What a build holds and the package ships."""


def _is_complete(path: Path, recipe: TinyRecipe) -> bool:
    """Whether `path` holds a finished build of `recipe` (marker, config, tokenizer, weights)."""
    marker = path / _MARKER
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    names = {p.name for p in path.iterdir()}
    has_weights = any(n.endswith((".safetensors", ".bin")) for n in names)
    return (
        saved.get("recipe") == recipe.as_json()
        and saved.get("format") == BUILD_FORMAT
        and {"config.json", "tokenizer.json"} <= names
        and has_weights
    )


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between local processes where ``fcntl`` exists; a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # e.g. a file system without locks: fall back to the atomic rename
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_tmp(parent: Path, key: str) -> None:
    """Remove old temporary build folders of `key`; recent ones may belong to a live builder."""
    now = time.time()
    for tmp in parent.glob(f".{key}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, final: Path, recipe: TinyRecipe, replace_valid: bool = False) -> None:
    """Move the finished build `tmp` to `final` atomically, replacing an invalid copy (or, with
    `replace_valid`, any copy). A valid copy that another process installed first is kept."""
    share_folder(tmp)  # mkdtemp's 0700 (and 0600 weights) would hide a shared cache
    try:
        os.replace(tmp, final)  # atomic; fails if `final` is a non-empty folder
        return
    except OSError:
        if not replace_valid and _is_complete(final, recipe):
            return  # `tmp` is removed by the caller
    # `final` exists: an invalid build, or with `replace_valid` an older one. Swap it atomically.
    trash = Path(tempfile.mkdtemp(prefix=f".{recipe.key()}.tmp-old-", dir=final.parent))
    try:
        os.replace(final, trash / "old")
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final, recipe):  # a concurrent builder won the race otherwise
            raise
    shutil.rmtree(trash, ignore_errors=True)

"""Files: the cache home, and atomic writes (a killed run leaves no half-written file behind)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def steerlight_home() -> Path:
    """Where steerlight keeps caches: ``$STEERLIGHT_HOME``, default ``~/.cache/steerlight``."""
    return Path(os.environ.get("STEERLIGHT_HOME") or Path.home() / ".cache" / "steerlight")


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """A temp path beside `dst`, renamed onto it when the block succeeds, removed otherwise."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)

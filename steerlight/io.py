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

from steerlight.errors import SteerlightError


def steerlight_home() -> Path:
    """Where steerlight keeps caches: ``$STEERLIGHT_HOME``, default ``~/.cache/steerlight``."""
    home = Path(os.environ.get("STEERLIGHT_HOME") or Path.home() / ".cache" / "steerlight")
    if home.exists() and not home.is_dir():
        raise SteerlightError(
            f"STEERLIGHT_HOME={home} is a file: point it at a folder (steerlight keeps its caches "
            "there), or unset it for ~/.cache/steerlight"
        )
    return home


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """A temp path beside `dst`, renamed onto it when the block succeeds, removed otherwise."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode a plain open() would (0644 under umask
    # 022), so a team sharing --root can read each other's results
    os.chmod(tmp, plain_file_mode())
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plain_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by
    setting and restoring it (for an instant other threads would create files under 0)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass  # no /proc (macOS), or no Umask line (kernels before 4.7)
    mask = os.umask(0o077)  # (0o077 rather than 0: a file made meanwhile is private, not open)
    os.umask(mask)
    return mask


def share_folder(folder: str | Path) -> None:
    """Give `folder` and everything in it the modes plain mkdir/open would give under the
    current umask (mkdtemp makes 0700 folders, some writers 0600 files): a cache shared by a
    team stays readable (0755/0644 under umask 022, 0775/0664 under 002)."""
    mask = _umask()
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_config(path: str | Path) -> dict[str, Any]:
    """A config file: a YAML mapping (`trainer:`, `model:`, `data:`, ...), or a one-line error."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a YAML {type(data).__name__}"
        raise SteerlightError(
            f"config file {path} is {what}: it must be a YAML mapping of settings "
            "(e.g. `model:`, `data:`, `trainer:`)"
        )
    return data


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder `path` if needed and check that a file can be written in it.

    Done before any work starts, so an unwritable output folder is a clear error up front
    rather than a traceback after the first (possibly hours-long) trial.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".steerlight-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SteerlightError(
            f"{what}: cannot write in {path} ({err.strerror or err}); use a writable folder"
        ) from None
    return path


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a missing file or a syntax error is a one-line SteerlightError."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise SteerlightError(f"{path} is a folder: pass a YAML file (a mapping of settings)")
    if not path.is_file():
        raise SteerlightError(f"file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SteerlightError(
            f"{path} is not valid YAML: {problem}{where}; fix the file (a YAML mapping)"
        ) from None

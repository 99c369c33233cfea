"""Every file in its place: nothing in the caller's working directory, no Hugging Face cache
outside $STEERLIGHT_HOME, no folder left by a refusal, caches readable under the user's umask,
and each `test` run's verdict kept in a folder of its own."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import write_search_config

import steerlight.search
from steerlight.errors import SteerlightError
from steerlight.layout import LATEST, RESULTS, VERDICTS, StudyFolder, latest_verdict

ROWS = [{"question": f"Q{i}: {i} + 1?", "answer": f"#### {i + 1}"} for i in range(6)]


def _no_datasets(*args, **kwargs):
    raise AssertionError("a local file went through datasets (its Arrow cache)")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_files_leave_no_datasets_cache(suffix, tmp_path, monkeypatch):
    import datasets

    from steerlight.data.sources import load_rows

    for split, rows in (("train", ROWS[:4]), ("test", ROWS[4:])):
        if suffix == ".jsonl":
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (tmp_path / f"{split}{suffix}").write_text(
                ("\ufeff" if split == "train" else "") + text
            )
        else:
            datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / f"{split}{suffix}"))
    monkeypatch.setattr(datasets, "load_dataset", _no_datasets)
    loaded = load_rows(str(tmp_path))
    assert loaded == {"train": ROWS[:4], "test": ROWS[4:]}


def test_a_hub_dataset_is_cached_under_steerlight_home(tmp_path, monkeypatch):
    import datasets

    from steerlight.data.sources import load_rows

    seen = {}

    def fake(name, config_name, **kwargs):
        seen.update(kwargs)
        return {s: datasets.Dataset.from_list(ROWS) for s in ("train", "test")}

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_rows("someone/gsm8k-copy")
    assert seen["cache_dir"] == str(tmp_path / "home" / "datasets")


def test_a_parquet_file_that_is_not_one_is_one_line(tmp_path):
    from steerlight.data.sources import load_rows

    (tmp_path / "train.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(SteerlightError, match=r"train.parquet: cannot be read as parquet \("):
        load_rows(str(tmp_path))
    (tmp_path / "train.parquet").unlink()
    (tmp_path / "train.jsonl").write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(SteerlightError, match=r"train.jsonl line 1: not UTF-8 text"):
        load_rows(str(tmp_path))


@pytest.mark.parametrize("url", ["not-a-url", "postgresql+psycopg2://u:secret@127.0.0.1:1/none"])
def test_a_refused_storage_leaves_no_folder(url, tiny_llama_dir, tmp_path):
    from steerlight.search.command import run

    config = write_search_config(tmp_path, tiny_llama_dir, {"alpha": [0.0, 1.0], "layer": [1]})
    root = tmp_path / "studies"
    with pytest.raises(SteerlightError, match="storage"):
        run(["--config", str(config), "--root", str(root), "--storage", url, "--n-trials", "1"])
    assert not root.exists(), list(root.rglob("*"))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_folders_follow_the_umask(umask, tmp_path):
    """A build is made in a mkdtemp folder (0700) and may hold 0600 files; installed, it has
    the modes plain mkdir/open give (0755/0644 under 022, 0775/0664 under 002)."""
    from steerlight.tiny.cache import _install
    from steerlight.tiny.recipe import TinyRecipe

    old = os.umask(umask)
    try:
        build = Path(tempfile.mkdtemp(dir=tmp_path))
        (build / "model.safetensors").write_bytes(b"weights")
        (build / "model.safetensors").chmod(0o600)
        (build / "sub").mkdir(mode=0o700)
        (build / "sub" / "part.json").write_text("{}")
        final = tmp_path / "tiny" / "key"
        final.parent.mkdir()
        _install(build, final, TinyRecipe())
    finally:
        os.umask(old)
    for path in [final, *final.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


def test_the_api_writes_nothing_in_the_working_directory_and_keeps_every_verdict(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """The search (with probes: a `fit` without a logger) and two verdicts from Python, run in
    an empty working directory; the study's best does not steer."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_search_config(tmp_path, tiny_llama_dir, {"layer": {"probe_top_k": 1}})
    root = tmp_path / "runs"
    study = steerlight.search.search(
        str(config), overrides={"model.alpha": 0.0}, n_trials=1, study_name="s", root=str(root)
    )
    best = study.best_trial.params
    assert set(best) == {"layer"}, best
    ckpt = str(StudyFolder(root, "s").best_ckpt)
    first = steerlight.search.verdict(ckpt, root=root)
    verdicts = StudyFolder(root, "s").path / VERDICTS
    assert latest_verdict(verdicts.parent) == verdicts / "001"
    saved = (verdicts / "001" / RESULTS).read_bytes()
    assert json.loads(saved) == first
    # what the study says, though it does not steer: the resolved layer and the strength
    assert first["steering"]["steers"] is False
    assert (first["layer"], first["alpha"], first["strength"]) == (best["layer"], 0.0, 0.0)

    second = steerlight.search.verdict(ckpt, root=root)
    assert second == first, "the same checkpoint and data: the same verdict"
    assert (verdicts / "001" / RESULTS).read_bytes() == saved, "the first verdict is kept"
    assert sorted(p.name for p in (verdicts / "002").iterdir()) == sorted(
        ["final_results.json", "predictions.jsonl", "reproducibility.json"]
    )
    assert (verdicts / LATEST).read_text() == "002\n"
    assert latest_verdict(verdicts.parent) == verdicts / "002"
    assert list(work.iterdir()) == [], "nothing in the caller's working directory"


def test_no_verdict_yet_is_one_line(tmp_path):
    with pytest.raises(SteerlightError, match=r"holds no verdict .*steerlight test --ckpt"):
        latest_verdict(tmp_path)


# ---- a full disk: one line naming the folder, no thread's traceback ---------------------------

FULL_DISK = """
import errno, sys
from tensorboard.compat.tensorflow_stub.io import gfile

first = gfile.LocalFileSystem.write
calls = []

def full(self, filename, content, binary_mode=False):  # the disk fills after the first event
    calls.append(filename)
    if len(calls) > 1:
        raise OSError(errno.ENOSPC, "No space left on device")
    return first(self, filename, content, binary_mode)

gfile.LocalFileSystem.write = gfile.LocalFileSystem.append = full
import steerlight.__main__
sys.argv = ["steerlight", *sys.argv[1:]]
steerlight.__main__.main()
"""


def test_a_full_disk_during_fit_is_one_line_naming_the_folder(tiny_llama_dir, tmp_path):
    import subprocess
    import sys

    import yaml
    from conftest import SEARCH_BASE, subprocess_env

    config = json.loads(json.dumps(SEARCH_BASE))
    config["model"].update(model_name_or_path=str(tiny_llama_dir), cache_dir=str(tmp_path / "c"))
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "full_disk.py").write_text(FULL_DISK)
    argv = [sys.executable, str(tmp_path / "full_disk.py"), "fit", "--config", "run.yaml"]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    folder = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert errors[0].startswith(f"steerlight: error: no space left on the device of {folder} ")
    assert "events.out.tfevents." in errors[0] and "free some space" in errors[0]


def test_a_thread_write_error_the_main_thread_never_saw_is_said(tmp_path, capsys):
    """A writer thread that fails after the main thread's last write: the same one line, and
    the command fails (nothing swallowed)."""
    import errno
    import threading

    from steerlight.errors import exit_on_error

    def write(filename: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def main() -> None:
        thread = threading.Thread(target=write, args=(str(tmp_path / "logs" / "events.out"),))
        thread.start()
        thread.join()

    with pytest.raises(SystemExit) as exit_info:
        exit_on_error("steerlight", main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"steerlight: error: no space left on the device of {tmp_path / 'logs'} (writing "
        "events.out): free some space there, or write the run elsewhere "
        "(trainer.default_root_dir, the logger's save_dir, --root or $STEERLIGHT_HOME)"
    ]


def test_a_thread_error_that_is_no_write_error_keeps_its_traceback(capsys, monkeypatch):
    """Only disk write errors of a thread are turned into the one line; a thread's other
    OSError (a broken pipe) goes to the usual hook (Python prints its traceback) and the
    command goes on."""
    import errno
    import threading

    from steerlight.errors import exit_on_error

    usual = []
    monkeypatch.setattr(threading, "excepthook", lambda args: usual.append(args.exc_value))

    def pipe() -> None:
        raise OSError(errno.EPIPE, "Broken pipe")

    def main() -> None:
        thread = threading.Thread(target=pipe)
        thread.start()
        thread.join()

    exit_on_error("steerlight", main)  # returns: the main thread did its work
    assert [e.errno for e in usual] == [errno.EPIPE]
    assert "steerlight: error" not in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_umask_is_read_without_being_changed(umask, monkeypatch):
    """Where /proc tells the umask, reading it never sets it (other threads may be creating
    files); without /proc it is read by setting it to a private mask and back."""
    import os

    from steerlight import io

    old = os.umask(umask)
    try:
        calls = []
        real = os.umask
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
        assert io._umask() == umask and calls == []
        monkeypatch.setattr(io.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError()))
        assert io._umask() == umask and calls == [0o077, umask]
    finally:
        os.umask(old)

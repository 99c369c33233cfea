"""The tiny model steerlight ships: it is the default recipe's build, an empty home gets it in
well under a second without training, a damaged copy is never installed, and (opt-in, minutes)
training the recipe again gives the same bytes or at least the same quality bar."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import pytest

from steerlight.tiny import BUILD_FORMAT, TinyRecipe, cache, tiny_model_path, train
from steerlight.tiny.__main__ import compare_with_shipped
from steerlight.tiny.cache import SHIPPED, SHIPPED_FILES, weights_sha256

MARKER = json.loads((SHIPPED / "tiny_recipe.json").read_text())


def test_the_shipped_copy_is_the_default_recipes_build():
    recipe = TinyRecipe()
    redo = "run `python scripts/ship_tiny.py` to ship the default recipe's build again"
    assert MARKER["recipe"] == recipe.as_json(), f"the recipe changed: {redo}"
    assert (MARKER["format"], MARKER["key"]) == (BUILD_FORMAT, recipe.key()), redo
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(SHIPPED_FILES)
    assert weights_sha256(SHIPPED) == MARKER["weights_sha256"]
    assert MARKER["accuracy"]["test_questions"] == recipe.n_test
    assert MARKER["accuracy"]["strict_exact_match"] >= 0.40  # the README's quality bar
    # bfloat16: 2 bytes per parameter (plus the safetensors header)
    size = (SHIPPED / "model.safetensors").stat().st_size
    assert MARKER["metrics"]["parameters"] * 2 <= size < MARKER["metrics"]["parameters"] * 2.01


def test_an_empty_home_gets_the_shipped_copy_without_training(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    monkeypatch.setattr(train, "build_tiny_model", lambda *a: pytest.fail("trained"))
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="steerlight"):
        path = tiny_model_path()
    assert time.perf_counter() - start < 5
    assert path == tmp_path / "tiny" / TinyRecipe().key()
    for name in SHIPPED_FILES:
        assert (path / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert [p.name for p in (tmp_path / "tiny").iterdir() if ".tmp-" in p.name] == []
    (line,) = [r.getMessage() for r in caplog.records if "installed" in r.getMessage()]
    assert str(path) in line and "python -m steerlight.tiny --force" in line
    assert tiny_model_path() == path  # found again, not copied again
    assert compare_with_shipped(path, TinyRecipe()).startswith("the same weights as the shipped")


def test_the_shipped_copy_does_not_wait_for_a_builders_lock(tmp_path, monkeypatch):
    import fcntl
    import threading

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    monkeypatch.setattr(train, "build_tiny_model", lambda *a: pytest.fail("trained"))
    lock = tmp_path / "tiny" / f".{TinyRecipe().key()}.lock"
    lock.parent.mkdir()
    found = []
    with open(lock, "a+") as held:  # e.g. `python -m steerlight.tiny --force` training
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: found.append(tiny_model_path()), daemon=True)
        worker.start()
        worker.join(timeout=30)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert found == [tmp_path / "tiny" / TinyRecipe().key()], "waited for the build's lock"


def test_a_damaged_shipped_copy_is_not_installed(tmp_path, monkeypatch, caplog):
    damaged = tmp_path / "shipped"
    shutil.copytree(SHIPPED, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(cache, "SHIPPED", damaged)
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path / "home"))
    trained = []

    def fake_build(recipe, out_dir):  # stands in for minutes of training
        trained.append(recipe)
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            shutil.copyfile(SHIPPED / name, out_dir / name)
        return {}

    monkeypatch.setattr(train, "build_tiny_model", fake_build)
    with caplog.at_level(logging.WARNING, logger="steerlight"):
        path = tiny_model_path()
    assert trained == [TinyRecipe()]
    assert "does not match the SHA-256" in caplog.text
    assert weights_sha256(path) == weights_sha256(SHIPPED)  # what the fake build wrote
    assert "differ from the shipped copy" in compare_with_shipped(path, TinyRecipe())


def test_other_recipes_are_trained_not_shipped():
    other = TinyRecipe(steps=999)
    assert not cache._is_complete(SHIPPED, other)
    assert "ships no build" in compare_with_shipped(SHIPPED, other)


@pytest.mark.skipif(
    os.environ.get("STEERLIGHT_CHECK_TINY_BUILD") != "1",
    reason="trains the default recipe (minutes): set STEERLIGHT_CHECK_TINY_BUILD=1",
)
def test_training_the_recipe_again_gives_the_shipped_copy(tmp_path, monkeypatch):
    """The same bytes where torch and the CPU kernels are the same; elsewhere the quality bar."""
    from steerlight.tiny import default_test_rows, evaluate

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    path = tiny_model_path(force=True)
    if weights_sha256(path) == weights_sha256(SHIPPED):
        return
    records = evaluate(path, default_test_rows())
    accuracy = sum(r["correct"] for r in records) / len(records)
    assert accuracy >= 0.40, f"a rebuild differs from the shipped copy and scores {accuracy:.3f}"
